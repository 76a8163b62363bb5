"""Vectorised, seeded split assignment: random ranks within groups, caps, user partitions."""

from __future__ import annotations

import hashlib

import numpy as np

from lore_rm.protocol import PROTOCOL_ROLES

ROLE_CODES = {r: i for i, r in enumerate(PROTOCOL_ROLES)}


def rank_in_groups(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rank (0..n_g-1) of every row within its group, in one pass."""
    groups = np.asarray(groups, dtype=np.int64)
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    return rank_by_key(groups, rng.random(groups.size))


def cap_per_group(
    groups: np.ndarray, cap: int | None, rng: np.random.Generator, rows: np.ndarray | None = None
) -> np.ndarray:
    """Mask keeping at most ``cap`` random rows of each group among ``rows`` (a bool mask;
    rows outside it are kept untouched). ``cap=None`` keeps everything."""
    groups = np.asarray(groups, dtype=np.int64)
    keep = np.ones(groups.size, dtype=bool)
    if cap is None:
        return keep
    sel = np.flatnonzero(rows) if rows is not None else np.arange(groups.size)
    rank = rank_in_groups(groups[sel], rng)
    keep[sel[rank >= cap]] = False
    return keep


def roles_from(unseen_row: np.ndarray, test_row: np.ndarray) -> np.ndarray:
    """Role codes (indices into PROTOCOL_ROLES) from (unseen user?, test side?) per row."""
    return (
        2 * np.asarray(unseen_row, dtype=np.int64) + np.asarray(test_row, dtype=np.int64)
    ).astype(np.int64)


def factorize(values) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sorted unique values) of a 1-D array."""
    uniq, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), uniq


# ---- stable assignment: a row's role depends only on its own keys and the seed ---------------
_MASK64 = (1 << 64) - 1


def stable_hashes(values) -> np.ndarray:
    """A 64-bit hash (uint64) of each value's text, the same in every process and version."""
    digests = b"".join(
        hashlib.blake2b(str(v).encode("utf-8"), digest_size=8).digest() for v in values
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _splitmix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def combine(*parts) -> np.ndarray:
    """One well-mixed uint64 per row from uint64 arrays (broadcast) and ints, in order."""
    h = np.zeros((), dtype=np.uint64)
    for p in parts:
        if isinstance(p, int | np.integer):
            p = np.uint64(int(p) & _MASK64)
        h = _splitmix(np.asarray(h ^ np.asarray(p, dtype=np.uint64), dtype=np.uint64))
    return np.asarray(h, dtype=np.uint64)


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Hashes as floats uniform on [0, 1) (their top 53 bits)."""
    return (np.asarray(h, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def rank_by_key(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The rank (0..n_g-1) of every row within its group by ascending ``keys`` (ties: row
    order), in one pass."""
    groups = np.asarray(groups, dtype=np.int64)
    n = groups.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), keys, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - run_start
    return rank


# salts of the independent stable draws (any fixed, distinct numbers)
UNSEEN_SALT, TEST_SALT, CAP_SALT = 1, 2, 3


def stable_unseen(user_hash: np.ndarray, unseen_fraction: float, seed: int) -> np.ndarray:
    """Bool per user: unseen when its draw from (user id, seed) falls below the fraction."""
    return unit_interval(combine(seed, UNSEEN_SALT, user_hash)) < unseen_fraction


def split_users_and_groups(
    user_hash: np.ndarray,
    user_codes: np.ndarray,
    group_hash: np.ndarray,
    unseen_fraction: float,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """Role code per row, from stable draws: adding users (or rows of other users, or
    reordering the rows) moves no user already there.

    ``user_hash`` (one per user, :func:`stable_hashes` of the ids), ``user_codes`` (per row),
    ``group_hash`` (per row: the unit that never straddles train and test, a prompt or a
    conversation turn). A user is unseen when its draw from (user id, seed) falls below
    ``unseen_fraction`` (about that share of the users); of each user's groups,
    ``floor(test_fraction * groups)`` (at most all but one: one group always stays on the
    train / few-shot side) go to test: those with the lowest draws from (user id, group, seed).
    """
    n_users = user_hash.size
    unseen_user = stable_unseen(user_hash, unseen_fraction, seed)
    pair = combine(seed, TEST_SALT, user_hash[user_codes], group_hash)
    groups, first = np.unique(pair, return_index=True)  # one per (user, group)
    group_of_row = np.searchsorted(groups, pair)
    group_user = user_codes[first]
    per_user = np.bincount(group_user, minlength=n_users)
    n_test = np.minimum(np.floor(per_user * test_fraction + 1e-9), per_user - 1)
    test_group = rank_by_key(group_user, groups) < n_test[group_user]
    return roles_from(unseen_user[user_codes], test_group[group_of_row])


def cap_by_key(
    groups: np.ndarray, cap: int | None, keys: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Mask keeping, of each group's rows among ``rows`` (a bool mask), the ``cap`` with the
    lowest ``keys``; every other row is kept. ``cap=None`` keeps everything."""
    keep = np.ones(groups.size, dtype=bool)
    if cap is None:
        return keep
    sel = np.flatnonzero(rows)
    keep[sel[rank_by_key(groups[sel], keys[sel]) >= cap]] = False
    return keep
