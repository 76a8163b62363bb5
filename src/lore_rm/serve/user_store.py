"""SQLite persistence for the service: onboarded users' weights and their comparisons.

One database file (WAL mode, ``synchronous=FULL``) holds three tables:

``meta``
    what the database belongs to: the model's basis fingerprint, the embedder name and the
    embedding width. Weights only mean something over the basis they were fitted on, so a
    database written for another model (or another backbone) is refused at start-up.
``comparisons``
    one row per posted comparison, append-only: the user, the prompt / chosen / rejected
    texts (JSON) and the feature ``x = e(prompt, chosen) - e(prompt, rejected)`` as float32
    bytes. The refit needs only ``x`` (:meth:`Comparisons.from_features`), so storing it
    means a refit never runs the backbone again; storing the texts as well keeps the data
    auditable and re-embeddable if the backbone ever changes. One difference instead of two
    embeddings halves the storage and is all the frozen-basis fit reads.
``users``
    the current weights of every onboarded user, with ``n_fit`` (how many of the user's
    comparisons the weights were fitted on) and ``seq`` (a database-wide version number).
``idempotency``
    optional idempotency keys of onboarding posts, per user: the hash of the body the key
    came with and the response that was sent, stored in the same transaction as the post's
    comparisons (a retry with the key gets that response back and stores nothing).
``deletions``
    the sha256 of each deleted user's id, with its ``seq`` (shared with ``users``, so every
    server process drops the user too); a seen user of the model folder stays deleted
    across restarts (:mod:`~lore_rm.serve.user_records`).

Concurrency and crashes:

* every write is one short transaction (``BEGIN IMMEDIATE``); a crash loses at most the
  transaction in flight. Writers queue on a per-process lock and, across processes, on an
  advisory lock file next to the database (``DB.writelock``), so they wait in line instead
  of polling SQLite's busy handler.
* an onboarding post is one transaction (:meth:`Store.add_and_fit`): its comparisons, the
  user's refitted weights and its idempotency key are committed together or not at all.
  The refit runs before the transaction on the committed comparisons plus the new ones; if
  another process added comparisons for the user meanwhile, it is redone inside the
  transaction. Weights are only written inside the transaction that counted the user's
  rows, so the stored weights are always those fitted on the rows stored: concurrent
  onboarding of one user, from threads or from several server processes, can never leave
  older weights in place of newer ones.
* a database written by an older lore-rm (comparisons and weights in two transactions) can
  hold ``n_fit`` below the stored count after a crash, and rows deleted by hand leave it
  above: the service refits those users on the rows there are at start-up, or when a read
  finds fewer rows than ``n_fit`` (:meth:`Store.stale_users`, :meth:`Store.refit`).
* any SQLite failure of a write (disk full, read-only file system, locked past the timeout,
  I/O error) rolls the transaction back and raises :class:`~lore_rm.errors.StorageError`
  naming the problem (:func:`describe`); the service then answers 503.
* ``seq`` lets every server process pick up weights written by the others
  (:meth:`Store.weights_since`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from lore_rm.errors import IdempotencyKeyReused, ModelFormatError, StorageError


def _fcntl() -> ModuleType | None:
    """POSIX's fcntl (a file lock queues writers of several server processes); None on
    Windows, where SQLite's busy timeout alone does."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    return fcntl


fcntl = _fcntl()

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    x BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS comparisons_user ON comparisons (user_id, id);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    weights BLOB NOT NULL,
    n_fit INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS users_seq ON users (seq);
CREATE TABLE IF NOT EXISTS idempotency (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE TABLE IF NOT EXISTS deletions (
    user_sha256 TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    deleted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deletions_seq ON deletions (seq);
CREATE TABLE IF NOT EXISTS strengths (
    user_id TEXT PRIMARY KEY,
    strength REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""

_INSERT_COMPARISONS = (
    "INSERT INTO comparisons (user_id, prompt, chosen, rejected, x, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# written inside the transaction that counted the user's rows: always the current fit
_UPSERT_WEIGHTS = (
    "INSERT INTO users (user_id, weights, n_fit, seq, updated_at) "
    "VALUES (?, ?, ?, (SELECT MAX(COALESCE((SELECT MAX(seq) FROM users), 0), "
    "COALESCE((SELECT MAX(seq) FROM deletions), 0)) + 1), ?) "
    "ON CONFLICT (user_id) DO UPDATE SET weights = excluded.weights, "
    "n_fit = excluded.n_fit, seq = excluded.seq, updated_at = excluded.updated_at"
)

# SQLite's primary result codes (extended codes keep them in the low byte)
_SQLITE_PROBLEMS = {
    5: "the database is locked by another writer (waited {timeout:g} s)",  # BUSY
    6: "the database is locked (waited {timeout:g} s)",  # LOCKED
    8: "the database is read-only",  # READONLY
    10: "a disk I/O error ({name}): the disk may be full or read-only",  # IOERR
    11: "the database file is corrupt",  # CORRUPT
    13: "the disk holding the database is full",  # FULL
    14: "the database file cannot be opened",  # CANTOPEN
}


def describe(exc: sqlite3.Error, path: Path, timeout_s: float) -> str:
    """What went wrong with the database, in words (from SQLite's error code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    problem = _SQLITE_PROBLEMS.get(code & 0xFF if isinstance(code, int) else -1)
    if problem is None:
        problem = f"a database error ({name}: {exc})"
    return f"{path}: {problem.format(timeout=timeout_s, name=name)}"


@dataclass(frozen=True)
class Idempotency:
    """An onboarding post's idempotency key and the hash of its body."""

    key: str
    body_sha256: str


@dataclass(frozen=True)
class Committed:
    """What :meth:`Store.add_and_fit` stored: the user's comparison count, the weights (fitted
    on all of them) and the response to send; ``replayed``: the key had been used (nothing
    was stored, ``response`` is the original one)."""

    total: int
    weights: np.ndarray | None
    response: dict
    replayed: bool


@dataclass(frozen=True)
class StoredComparison:
    """A comparison as posted: the prompt messages and the two responses (JSON-able)."""

    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]


class FifoLock:
    """A lock handed to waiters in arrival order (``threading.Lock`` is not fair: under load a
    waiter can lose the race to newcomers many times, which shows as multi-second tails)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            ticket = threading.Event()
            self._waiters.append(ticket)
        ticket.wait()  # the releasing thread handed the lock over

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_WRITE_LOCKS: dict[str, FifoLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> FifoLock:
    """One lock per database file and process: threads of a process queue for the write lock
    here instead of in SQLite's busy handler (which sleeps and inflates tail latency); other
    processes still wait in ``busy_timeout``."""
    key = str(path.resolve())
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, FifoLock())


class Store:
    """Thread-safe access to the service database (one connection per thread)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wlock = _write_lock(self.path)
        # writers of other processes queue on this file's lock (woken as soon as it is free)
        # rather than polling in SQLite's busy handler; the lock file holds no data
        lockfile = self.path.with_name(self.path.name + ".writelock")
        try:
            self._lockfile = open(lockfile, "a+b")
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
        except OSError as exc:
            raise StorageError(f"{lockfile}: cannot open the database's lock file ({exc})") from exc
        except sqlite3.Error as exc:
            raise StorageError(describe(exc, self.path, timeout_s)) from exc
        with self._write(conn):
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        version = self.get_meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise ModelFormatError(
                f"{self.path}: database schema version {version}; this lore-rm reads "
                f"version {SCHEMA_VERSION}"
            )

    # ---- connections ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            # deleted rows are overwritten with zeros, not left in free pages (DELETE /users)
            conn.execute("PRAGMA secure_delete=ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """``with store._write(conn):`` one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction.

        Committed in full or rolled back; SQLite's errors (the COMMIT's too) come out as
        :class:`StorageError`."""
        with self._wlock:
            if fcntl is not None:
                fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise StorageError(
                    describe(exc, self.path, self.timeout_s) + "; nothing was stored"
                ) from exc
            finally:
                if fcntl is not None:
                    fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        """Roll back what is left of a failed transaction (SQLite may have rolled it back
        itself, e.g. after a full disk)."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # the connection is unusable: SQLite discards the transaction
                pass

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:  # closed from another thread already
                    pass
            self._all.clear()
        self._local = threading.local()
        self._lockfile.close()

    # ---- meta -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def bind(self, expected: dict[str, str]) -> None:
        """Record ``expected`` (model fingerprint, embedder, d) or check it matches.

        Raises :class:`ModelFormatError` naming the first key that differs.
        """
        conn = self._conn()
        with self._write(conn):
            for key, value in expected.items():
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                elif row[0] != value:
                    raise ModelFormatError(
                        f"{self.path}: this database was written for {key} = {row[0]!r}, "
                        f"but the service runs with {key} = {value!r}; use another --db file "
                        "or the model and backbone it was written for"
                    )

    # ---- comparisons ------------------------------------------------------------------------
    def add_comparisons(
        self, user: str, items: Sequence[StoredComparison], features: np.ndarray
    ) -> int:
        """Append ``items`` (with their feature rows) for ``user`` in one transaction.

        Returns the user's total number of stored comparisons after the insert.
        """
        rows = self._rows(user, items, features)
        conn = self._conn()
        with self._write(conn):
            conn.executemany(_INSERT_COMPARISONS, rows)
            (total,) = conn.execute(
                "SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user,)
            ).fetchone()
        return int(total)

    @staticmethod
    def _rows(user: str, items: Sequence[StoredComparison], features: np.ndarray) -> list[tuple]:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(items):
            raise ValueError(f"features must have one row per comparison, got {x.shape}")
        now = time.time()
        return [
            (
                user,
                json.dumps(item.prompt),
                json.dumps(item.chosen),
                json.dumps(item.rejected),
                x[i].tobytes(),
                now,
            )
            for i, item in enumerate(items)
        ]

    def features_of(
        self, user: str, d: int, *, upto: int | None = None, window: int | None = None
    ) -> np.ndarray:
        """``user``'s stored features (n, d) in insertion order (one snapshot): the first
        ``upto`` rows (default all), of which only the last ``window`` (default all)."""
        return self._features(self._conn(), user, d, upto=upto, window=window)

    @staticmethod
    def _features(
        conn: sqlite3.Connection,
        user: str,
        d: int,
        *,
        upto: int | None = None,
        window: int | None = None,
    ) -> np.ndarray:
        if upto is None and window is None:
            rows = conn.execute(
                "SELECT x FROM comparisons WHERE user_id = ? ORDER BY id", (user,)
            ).fetchall()
        else:
            if upto is None:
                (upto,) = conn.execute(
                    "SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user,)
                ).fetchone()
            start = 0 if window is None else max(0, int(upto) - window)
            rows = conn.execute(
                "SELECT x FROM comparisons WHERE user_id = ? ORDER BY id LIMIT ? OFFSET ?",
                (user, max(0, int(upto) - start), start),
            ).fetchall()
        if not rows:
            return np.zeros((0, d), dtype=np.float32)
        buf = b"".join(r[0] for r in rows)
        return np.frombuffer(buf, dtype=np.float32).reshape(len(rows), d).copy()

    def count_comparisons(self, user: str | None = None) -> int:
        conn = self._conn()
        if user is None:
            (n,) = conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()
        else:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user,)
            ).fetchone()
        return int(n)

    # ---- weights ----------------------------------------------------------------------------
    # ---- onboarding: comparisons, weights and key in one transaction --------------------------
    def replay(self, user: str, idem: Idempotency) -> dict | None:
        """The response stored with ``user``'s key ``idem.key``, or None if the key is new.

        Raises :class:`IdempotencyKeyReused` if the key came with another body."""
        return self._replay(self._conn(), user, idem)

    @staticmethod
    def _replay(conn: sqlite3.Connection, user: str, idem: Idempotency) -> dict | None:
        row = conn.execute(
            "SELECT body_sha256, response FROM idempotency WHERE user_id = ? AND key = ?",
            (user, idem.key),
        ).fetchone()
        if row is None:
            return None
        if row[0] != idem.body_sha256:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idem.key!r} was already used for user {user!r} with another "
                "request body; use a new key for a new request"
            )
        return dict(json.loads(row[1]))

    def add_and_fit(
        self,
        user: str,
        items: Sequence[StoredComparison],
        features: np.ndarray,
        *,
        fit: Callable[[np.ndarray], np.ndarray],
        fitted: tuple[int, np.ndarray],
        respond: Callable[[int, np.ndarray], dict],
        idem: Idempotency | None = None,
        window: int | None = None,
    ) -> Committed:
        """Append ``items`` for ``user`` and store the weights fitted on all of the user's
        comparisons, in one transaction (with ``idem``'s key and response, when given).

        ``fitted = (n, w)``: weights ``w`` already fitted on the user's first ``n`` stored
        comparisons followed by ``features``; used if the user still has ``n`` comparisons
        when the transaction starts, else ``fit(all features)`` runs inside it. ``respond(total,
        w)`` builds the response stored with the key; ``window``: ``fit`` needs only the
        user's last ``window`` stored comparisons."""
        rows = self._rows(user, items, features)
        conn = self._conn()
        with self._write(conn):
            if idem is not None and (done := self._replay(conn, user, idem)) is not None:
                return Committed(int(done["total"]), None, done, replayed=True)
            (before,) = conn.execute(
                "SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user,)
            ).fetchone()
            n_prev, w = fitted
            if before != n_prev:  # another process onboarded this user meanwhile
                d = features.shape[1]
                w = fit(np.concatenate([self._features(conn, user, d, window=window), features]))
            total = int(before) + len(rows)
            conn.executemany(_INSERT_COMPARISONS, rows)
            w = np.ascontiguousarray(w, dtype=np.float32)
            conn.execute(_UPSERT_WEIGHTS, (user, w.tobytes(), total, time.time()))
            response = respond(total, w)
            if idem is not None:
                conn.execute(
                    "INSERT INTO idempotency (user_id, key, body_sha256, response, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (user, idem.key, idem.body_sha256, json.dumps(response), time.time()),
                )
        return Committed(total, w, response, replayed=False)

    def weights_since(self, seq: int) -> tuple[list[str], np.ndarray | None, list[int], int]:
        """Users whose weights changed after version ``seq``: ids, weights (n, K), n_fit, and
        the newest version seen."""
        rows = (
            self._conn()
            .execute(
                "SELECT user_id, weights, n_fit, seq FROM users WHERE seq > ? ORDER BY seq", (seq,)
            )
            .fetchall()
        )
        if not rows:
            return [], None, [], seq
        w = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return [r[0] for r in rows], w, [int(r[2]) for r in rows], int(rows[-1][3])

    def user_record(self, user: str) -> tuple[np.ndarray, int] | None:
        row = (
            self._conn()
            .execute("SELECT weights, n_fit FROM users WHERE user_id = ?", (user,))
            .fetchone()
        )
        if row is None:
            return None
        return np.frombuffer(row[0], dtype=np.float32).copy(), int(row[1])

    def stale_users(self) -> list[str]:
        """Users whose weights were not fitted on exactly their stored comparisons: more
        rows than ``n_fit`` (a crash between storing comparisons and storing the refit, in a
        database written by an older lore-rm) or fewer (rows deleted by hand, with or
        without the user's weights row)."""
        rows = (
            self._conn()
            .execute(
                "SELECT c.user_id FROM comparisons c LEFT JOIN users u ON u.user_id = c.user_id "
                "GROUP BY c.user_id HAVING COUNT(*) != COALESCE(MAX(u.n_fit), 0) "
                "UNION SELECT u.user_id FROM users u WHERE u.n_fit > 0 AND NOT EXISTS "
                "(SELECT 1 FROM comparisons c WHERE c.user_id = u.user_id) ORDER BY 1"
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def refit(
        self,
        user: str,
        d: int,
        fit: Callable[[np.ndarray], np.ndarray],
        window: int | None = None,
    ) -> tuple[np.ndarray | None, int]:
        """Refit ``user``'s weights on the comparisons stored now (the last ``window`` of
        them) and store them whatever ``n_fit`` they replace, in one transaction: ``(weights,
        n)``. With no comparisons left the weights row is deleted: ``(None, 0)``."""
        conn = self._conn()
        with self._write(conn):
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user,)
            ).fetchone()
            if not n:
                conn.execute("DELETE FROM users WHERE user_id = ?", (user,))
                return None, 0
            x = self._features(conn, user, d, upto=n, window=window)
            w = np.ascontiguousarray(fit(x), dtype=np.float32)
            conn.execute(_UPSERT_WEIGHTS, (user, w.tobytes(), int(n), time.time()))
        return w, int(n)
