"""Failure handling of the service: storage failures (503, nothing stored), idempotency keys
on onboarding posts, and ``--workers`` processes that die with their master."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_utils import (
    D,
    LiveServer,
    free_port,
    shared_model_dir,
    start_lore_serve,
    stop_lore_serve,
)

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.errors import StorageError
from lore_rm.serve.app import create_app
from lore_rm.serve.service import RewardService
from lore_rm.serve.user_store import Store, StoredComparison


def body(n: int, tag: str = "a") -> dict:
    return {
        "comparisons": [
            {
                "prompt": f"question {tag} {i}",
                "chosen": f"winter river quiet {tag} {i}",
                "rejected": f"sunny tiger funny {tag} {i}",
            }
            for i in range(n)
        ]
    }


def post(client: httpx.Client, user: str, payload: dict, key: str | None = None):
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(f"/users/{user}/comparisons", json=payload, headers=headers)


def stored(db: Path, user: str) -> int:
    con = sqlite3.connect(db)
    try:
        (n,) = con.execute("SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user,)).fetchone()
    finally:
        con.close()
    return int(n)


@pytest.fixture()
def locked_service(tmp_path):
    """A live in-process server whose writes give up after 0.3 s on a locked database."""
    model = LowRankReward.from_pretrained(shared_model_dir())
    svc = RewardService(model, HashingEmbedder(D), tmp_path / "db.sqlite", db_timeout_s=0.3)
    app = create_app(model, svc.embedder, svc.db_path, service=svc)
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, svc
    svc.close()


def test_locked_database_is_503_and_changes_nothing(locked_service):
    client, svc = locked_service
    first = post(client, "ann", body(2), key="k1")
    assert first.status_code == 200 and first.json()["total"] == 2
    before = client.get("/users/ann").json()

    holder = sqlite3.connect(svc.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        r = post(client, "ann", body(3, "b"), key="k2")
        assert r.status_code == 503
        assert "locked" in r.json()["detail"] and "nothing was stored" in r.json()["detail"]
        assert client.get("/users/ann").json() == before  # served weights unchanged
        assert client.post("/reward", json={"user": "ann", "conversations": [
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        ]}).status_code == 200  # fmt: skip
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert stored(svc.db_path, "ann") == 2

    retry = post(client, "ann", body(3, "b"), key="k2")
    assert retry.status_code == 200 and retry.json()["total"] == 5
    assert "Idempotent-Replayed" not in retry.headers
    assert client.get("/users/ann").json()["weights"] == retry.json()["weights"]


def test_idempotency_key_replays_and_refuses_another_body(locked_service):
    client, svc = locked_service
    first = post(client, "bo", body(2), key="retry-me")
    again = post(client, "bo", body(2), key="retry-me")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert stored(svc.db_path, "bo") == 2

    other = post(client, "bo", body(1, "c"), key="retry-me")
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert "another request body" in other.json()["detail"][0]["msg"]
    # keys are per user; no key: every post stores
    assert post(client, "cy", body(2), key="retry-me").json()["total"] == 2
    assert post(client, "bo", body(2)).json()["total"] == 4
    assert post(client, "bo", body(2)).json()["total"] == 6
    bad = post(client, "bo", body(1), key="has space")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][0] == "header"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit and /proc: Linux")
def test_full_disk_is_503_then_nothing_is_stored_after_a_restart(tmp_path):
    """A real write failure: the server may not grow any file past its current size
    (RLIMIT_FSIZE, what a full disk looks like to SQLite: a short write)."""
    model_dir, db = shared_model_dir(), tmp_path / "db.sqlite"
    proc, url = start_lore_serve(model_dir, db)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert post(client, "dee", body(2), key="k1").json()["total"] == 2
            before = client.get("/users/dee").json()
            wal = db.with_name(db.name + "-wal").stat().st_size
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (wal, hard))
            r = post(client, "dee", body(40, "b"), key="k2")
            assert r.status_code == 503, r.text
            assert "disk" in r.json()["detail"] and "nothing was stored" in r.json()["detail"]
            assert client.get("/users/dee").json() == before
    finally:
        proc.kill()  # a crash right after the failure
        proc.wait(timeout=10)
    assert stored(db, "dee") == 2

    proc, url = start_lore_serve(model_dir, db)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/users/dee").json()["n_comparisons"] == 2
            retry = post(client, "dee", body(40, "b"), key="k2")
            assert retry.status_code == 200 and retry.json()["total"] == 42
            assert post(client, "dee", body(40, "b"), key="k2").headers["Idempotent-Replayed"]
    finally:
        stop_lore_serve(proc)
    assert stored(db, "dee") == 42
    assert Store(db).user_record("dee")[1] == 42  # type: ignore[index]


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux")
def test_workers_die_with_their_master(tmp_path):
    proc, url = start_lore_serve(shared_model_dir(), tmp_path / "db.sqlite", "--workers", "2")
    port = int(url.rsplit(":", 1)[1])
    try:
        deadline = time.monotonic() + 20
        while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) >= 2, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if alive(w)], "orphan workers outlived the master"
        assert port_free(port)
    finally:
        for w in children(proc.pid) + [proc.pid]:
            if alive(w):
                os.kill(w, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux")
def test_workers_still_loading_die_with_their_master(tmp_path):
    """The master killed while its workers are still importing: they used to see it gone
    before arming their death signal, finish loading and serve on as orphans."""
    port = free_port()
    cmd = [sys.executable, "-m", "lore_rm.cli", "serve", str(shared_model_dir()), "--backbone",
           f"hashing-{D}", "--port", str(port), "--db", str(tmp_path / "db.sqlite"),
           "--workers", "2", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.01)
        assert len(workers) >= 2, workers
        os.kill(proc.pid, signal.SIGKILL)  # the workers are still starting up
        proc.wait(timeout=5)
        deadline = time.monotonic() + 30  # a worker finds out once its imports are done
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if alive(w)], "orphan workers outlived the master"
        assert port_free(port)
    finally:
        for w in [*workers, proc.pid]:
            if alive(w):
                os.kill(w, signal.SIGKILL)


def test_lore_serve_gives_loading_workers_time(monkeypatch, tmp_path):
    """uvicorn's fixed 5 s health check killed and respawned workers still loading a
    backbone: lore serve gives them --worker-healthcheck-s (60 by default)."""
    import uvicorn
    from typer.testing import CliRunner

    from lore_rm.cli.main import app as cli

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(kw, target=target))
    args = ["serve", str(shared_model_dir()), "--backbone", f"hashing-{D}", "--db",
            str(tmp_path / "db.sqlite"), "--workers", "2"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen["workers"] == 2 and seen["timeout_worker_healthcheck"] == 60


def test_same_key_from_two_threads_stores_once(locked_service):
    import threading

    client, svc = locked_service
    url = str(client.base_url)
    results: list[httpx.Response] = []

    def go() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            results.append(post(c, "eve", body(3), key="twin"))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 4
    assert len({tuple(r.json()["weights"]) for r in results}) == 1
    assert sum("Idempotent-Replayed" in r.headers for r in results) == 3
    assert stored(svc.db_path, "eve") == 3
    np.testing.assert_allclose(
        client.get("/users/eve").json()["weights"], results[0].json()["weights"]
    )


def test_a_read_only_connection_stores_nothing(tmp_path):
    """SQLite's own read-only error (a connection opened mode=ro stands in for a read-only
    file system: root, which runs these tests here, ignores file permissions)."""
    store = Store(tmp_path / "db.sqlite")
    store._local.conn = sqlite3.connect(
        f"file:{store.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    x = np.ones((1, 4), dtype=np.float32)
    items = [StoredComparison([{"role": "user", "content": "q"}], [], [])]
    with pytest.raises(StorageError, match="read-only; nothing was stored"):
        store.add_and_fit(
            "fay", items, x, fit=lambda f: f.sum(0), fitted=(0, x[0]), respond=lambda n, w: {}
        )
    assert not store._local.conn.in_transaction
    store._local.conn.close()
    store._local.conn = None
    assert store.count_comparisons("fay") == 0 and store.user_record("fay") is None
    store.close()


def test_unopenable_database_is_a_storage_error(tmp_path):
    (tmp_path / "dir.sqlite").mkdir()  # a folder where the database file should be
    with pytest.raises(StorageError, match="dir.sqlite"):
        Store(tmp_path / "dir.sqlite")
