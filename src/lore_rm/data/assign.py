"""Vectorised, seeded split assignment: random ranks within groups, caps, user partitions."""

from __future__ import annotations

import numpy as np

from lore_rm.protocol import PROTOCOL_ROLES

ROLE_CODES = {r: i for i, r in enumerate(PROTOCOL_ROLES)}


def rank_in_groups(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rank (0..n_g-1) of every row within its group, in one pass."""
    groups = np.asarray(groups, dtype=np.int64)
    n = groups.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((rng.random(n), groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - run_start
    return rank


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


def pick_fraction(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool mask of ``round(n * fraction)`` randomly chosen items out of n."""
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: int(round(n * fraction))]] = True
    return chosen


def roles_from(unseen_row: np.ndarray, test_row: np.ndarray) -> np.ndarray:
    """Role codes (indices into PROTOCOL_ROLES) from (unseen user?, test side?) per row."""
    return (
        2 * np.asarray(unseen_row, dtype=np.int64) + np.asarray(test_row, dtype=np.int64)
    ).astype(np.int64)


def split_users_and_groups(
    user_codes: np.ndarray,
    group_codes: np.ndarray,
    unseen_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Role code per row: users split seen / unseen at random, then each user's groups (the
    unit that never straddles train and test: a prompt, a conversation turn) train / test.

    ``floor(test_fraction * groups)`` of a user's groups go to test, at most all but one:
    one group always stays on the train / few-shot side.
    """
    n_users = int(user_codes.max()) + 1 if user_codes.size else 0
    unseen_user = pick_fraction(n_users, unseen_fraction, rng)
    width = int(group_codes.max()) + 1 if group_codes.size else 1
    groups, _ = factorize(user_codes * width + group_codes)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    group_user = np.zeros(n_groups, dtype=np.int64)
    group_user[groups] = user_codes
    per_user = np.bincount(group_user, minlength=n_users)
    n_test = np.minimum(np.floor(per_user * test_fraction + 1e-9), per_user - 1)
    test_group = rank_in_groups(group_user, rng) < n_test[group_user]
    return roles_from(unseen_user[user_codes], test_group[groups])


def factorize(values) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sorted unique values) of a 1-D array."""
    uniq, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), uniq
