"""A user's records in the service database: read them all, list users, delete one.

Deleting a user removes, in one transaction, their comparisons (texts and features), their
weights row and their idempotency keys, and records the sha256 of their id in
``deletions`` (with a ``seq`` shared with the ``users`` table, so every server process
picks the deletion up, and a seen user of the model folder stays deleted across restarts;
the id itself is not kept). The connections run with ``secure_delete``, so the deleted
rows are overwritten with zeros rather than left in free pages, and the write-ahead log,
which still holds copies of the pages as they were, is checkpointed into the database and
truncated to zero bytes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lore_rm.serve.strengths import bump_version
from lore_rm.serve.user_store import Store

_IN_CHUNK = 500  # ids per "IN (...)" (SQLite's variable limit is 32766 nowadays, 999 before)


def user_sha256(user: str) -> str:
    """What the database keeps of a deleted user's id."""
    return hashlib.sha256(user.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Changes:
    """What other processes wrote since a ``seq``: deletions (id hashes) and weights."""

    deleted: list[str]
    users: list[str]
    weights: np.ndarray | None  # (len(users), K)
    n_fit: list[int]
    newest: int


def changes_since(store: Store, seq: int) -> Changes:
    """Deletions and weight rows with a version above ``seq``, read in one snapshot (a
    deletion and a later write are never seen one without the other)."""
    conn = store._conn()
    conn.execute("BEGIN")
    try:
        deleted = conn.execute(
            "SELECT user_sha256, seq FROM deletions WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()
        rows = conn.execute(
            "SELECT user_id, weights, n_fit, seq FROM users WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    newest = max([seq, *(int(r[1]) for r in deleted), *(int(r[3]) for r in rows)])
    w = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]) if rows else None
    return Changes(
        [str(r[0]) for r in deleted],
        [str(r[0]) for r in rows],
        w,
        [int(r[2]) for r in rows],
        newest,
    )


def deleted_hashes(store: Store) -> set[str]:
    """Every deleted user's id hash."""
    rows = store._conn().execute("SELECT user_sha256 FROM deletions").fetchall()
    return {str(r[0]) for r in rows}


@dataclass(frozen=True)
class Deleted:
    """What a deletion removed, and whether the database files were scrubbed."""

    comparisons: int
    weights: bool
    idempotency_keys: int
    scrubbed: bool  # the write-ahead log was checkpointed and truncated


def delete_user(store: Store, user: str) -> Deleted:
    """Remove ``user``'s comparisons, weights, idempotency keys and chosen personalisation
    strength; record the deletion."""
    conn = store._conn()
    with store._write(conn):
        # the next version, taken before the user's own row (perhaps the newest) goes
        (seq,) = conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM users), 0), "
            "COALESCE((SELECT MAX(seq) FROM deletions), 0)) + 1"
        ).fetchone()
        n_comp = conn.execute("DELETE FROM comparisons WHERE user_id = ?", (user,)).rowcount
        n_w = conn.execute("DELETE FROM users WHERE user_id = ?", (user,)).rowcount
        n_keys = conn.execute("DELETE FROM idempotency WHERE user_id = ?", (user,)).rowcount
        if conn.execute("DELETE FROM strengths WHERE user_id = ?", (user,)).rowcount:
            bump_version(conn)
        conn.execute(
            "INSERT INTO deletions (user_sha256, seq, deleted_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_sha256) DO UPDATE SET seq = excluded.seq, "
            "deleted_at = excluded.deleted_at",
            (user_sha256(user), int(seq), time.time()),
        )
    return Deleted(int(n_comp), n_w > 0, int(n_keys), scrub(store))


def scrub(store: Store) -> bool:
    """Copy the write-ahead log into the database and truncate it: the log keeps earlier
    images of every page it wrote, deleted rows included. Waits for readers and writers
    (the busy timeout); False when some still held it."""
    try:
        busy, _, _ = store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error:
        return False
    return int(busy) == 0


def user_comparisons(
    store: Store, user: str, offset: int, limit: int, *, features: bool = False
) -> list[dict]:
    """A page of ``user``'s stored comparisons, in the order they were posted."""
    cols = "id, prompt, chosen, rejected, created_at" + (", x" if features else "")
    rows = (
        store._conn()
        .execute(
            f"SELECT {cols} FROM comparisons WHERE user_id = ? ORDER BY id LIMIT ? OFFSET ?",
            (user, int(limit), int(offset)),
        )
        .fetchall()
    )
    out = []
    for r in rows:
        item = {
            "id": int(r[0]),
            "prompt": json.loads(r[1]),
            "chosen": json.loads(r[2]),
            "rejected": json.loads(r[3]),
            "created_at": float(r[4]),
        }
        if features:
            item["x"] = np.frombuffer(r[5], dtype=np.float32).tolist()
        out.append(item)
    return out


def idempotency_keys(store: Store, user: str) -> list[dict]:
    """``user``'s stored idempotency keys (the key and when it was used)."""
    rows = (
        store._conn()
        .execute(
            "SELECT key, created_at FROM idempotency WHERE user_id = ? ORDER BY created_at",
            (user,),
        )
        .fetchall()
    )
    return [{"key": str(r[0]), "created_at": float(r[1])} for r in rows]


def comparison_counts(store: Store, users: Sequence[str]) -> dict[str, int]:
    """Stored comparisons per user of ``users`` (users with none are left out)."""
    conn = store._conn()
    out: dict[str, int] = {}
    ids = list(dict.fromkeys(users))
    for start in range(0, len(ids), _IN_CHUNK):
        part = ids[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(part))
        rows = conn.execute(
            f"SELECT user_id, COUNT(*) FROM comparisons WHERE user_id IN ({marks}) "
            "GROUP BY user_id",
            part,
        ).fetchall()
        out.update((str(u), int(n)) for u, n in rows)
    return out


def features_of_users(store: Store, users: Sequence[str], d: int) -> dict[str, np.ndarray]:
    """Every stored feature row (n, d) of each user of ``users``, in posting order (one
    snapshot)."""
    conn = store._conn()
    ids = list(dict.fromkeys(users))
    out: dict[str, np.ndarray] = {}
    conn.execute("BEGIN")
    try:
        for start in range(0, len(ids), _IN_CHUNK):
            part = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT user_id, x FROM comparisons WHERE user_id IN ({marks}) "
                "ORDER BY user_id, id",
                part,
            ).fetchall()
            if not rows:
                continue
            x = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, d)
            who = np.array([r[0] for r in rows], dtype=object)
            cuts = np.flatnonzero(who[1:] != who[:-1]) + 1
            for block, first in zip(np.split(x, cuts), [0, *cuts.tolist()], strict=True):
                out[str(who[first])] = block.copy()
    finally:
        conn.execute("COMMIT")
    return out
