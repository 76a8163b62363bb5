"""Each user's personalisation strength, stored in the service database.

A user may set how far their rewards move from the shared reward toward their own weights:
``w_bar + lam * (w_u - w_bar)``, ``lam`` in [0, 1]; 0 opts out of personalisation. Users
who set nothing get the model's strength (``personalization_``, chosen by the fit's
cross-validation). The table is small (only users who chose), so every process keeps it in
memory and rereads it when the version in ``meta`` moves (another process wrote to it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from lore_rm.errors import DataError
from lore_rm.serve.user_store import Store

VERSION_KEY = "strengths_version"


class Strengths:
    """The users' chosen strengths in ``store`` (its ``strengths`` table)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._version: str | None = None
        self._chosen: dict[str, float] = {}

    def _fresh(self) -> dict[str, float]:
        version = self.store.get_meta(VERSION_KEY)
        with self._lock:
            if version != self._version:
                rows = self.store._conn().execute("SELECT user_id, strength FROM strengths")
                self._chosen = {str(u): float(s) for u, s in rows.fetchall()}
                self._version = version
            return self._chosen

    def of(self, users: Sequence[str | None]) -> list[float | None]:
        """Each user's chosen strength (None: they chose none)."""
        chosen = self._fresh()
        if not chosen:
            return [None] * len(users)
        return [None if u is None else chosen.get(u) for u in users]

    def set(self, user: str, strength: float | None) -> None:
        """Store ``user``'s strength (None: back to the model's)."""
        if strength is not None and not 0.0 <= float(strength) <= 1.0:
            raise DataError(f"personalization must be in [0, 1], got {strength!r}")
        conn = self.store._conn()
        with self.store._write(conn):
            if strength is None:
                conn.execute("DELETE FROM strengths WHERE user_id = ?", (user,))
            else:
                conn.execute(
                    "INSERT INTO strengths (user_id, strength, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (user_id) DO UPDATE SET strength = excluded.strength, "
                    "updated_at = excluded.updated_at",
                    (user, float(strength), time.time()),
                )
            bump_version(conn)


def bump_version(conn) -> None:
    """Tell every process that the strengths table changed (inside a write transaction)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE "
        "SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        (VERSION_KEY,),
    )
