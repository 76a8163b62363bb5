"""Helpers for the service tests: a small fitted model and a real uvicorn server on loopback."""

from __future__ import annotations

import atexit
import functools
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import torch
import uvicorn

from lore_rm import Comparisons, LowRankReward
from lore_rm.embed.base import Embedder
from lore_rm.embed.hashing import HashingEmbedder

D = 64
WORDS = (
    "apple banana cherry delta echo forest garden harbor island jungle kettle lemon "
    "mountain night ocean piano quiet river sunny tiger umbrella violet winter yellow zebra "
    "short long polite rude formal casual detailed brief funny serious"
).split()


def conversation(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def random_text(gen: torch.Generator, n: int = 6) -> str:
    idx = torch.randint(0, len(WORDS), (n,), generator=gen).tolist()
    return " ".join(WORDS[i] for i in idx)


def fit_small_model(
    d: int = D, rank: int = 3, seed: int = 0, embedder: Embedder | None = None
) -> LowRankReward:
    """A rank-3 model over ``embedder`` (default HashingEmbedder(d)) embeddings of random
    texts, 8 seen users."""
    gen = torch.Generator().manual_seed(seed)
    emb = embedder or HashingEmbedder(d)
    d = emb.dim
    texts = [conversation(random_text(gen), random_text(gen)) for _ in range(120)]
    table = emb.embed(texts)
    truth_v = torch.randn(d, rank, generator=gen)
    n_users = 8
    truth_w = torch.eye(rank)[torch.arange(n_users) % rank] * 0.8 + 0.2 / rank
    n = 480
    a = torch.randint(0, len(texts), (n,), generator=gen)
    b = torch.randint(0, len(texts), (n,), generator=gen)
    u = torch.randint(0, n_users, (n,), generator=gen)
    margin = ((table[a] - table[b]) @ truth_v * truth_w[u]).sum(1)
    chosen = torch.where(margin >= 0, a, b)
    rejected = torch.where(margin >= 0, b, a)
    comps = Comparisons.from_pairs(table, chosen, rejected, [f"seen{i}" for i in u.tolist()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LowRankReward(rank=rank, n_iter=20, backbone=emb.name, seed=seed).fit(
            comps, emb.reference_head()
        )


class LiveServer:
    """``with LiveServer(app) as url:`` uvicorn on 127.0.0.1, a free port, in a thread."""

    def __init__(
        self,
        app,
        *,
        start_timeout_s: float = 20.0,
        log_level: str = "warning",
        access_log: bool = False,
        lifespan: str = "off",
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, lifespan=lifespan, access_log=access_log)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.start_timeout_s = start_timeout_s

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.server.should_exit = True
                raise RuntimeError("uvicorn did not start in time")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@functools.lru_cache(maxsize=1)
def shared_model_dir() -> Path:
    """The small model saved once per test process (removed at exit)."""
    path = Path(tempfile.mkdtemp(prefix="lore-serve-model-"))
    atexit.register(shutil.rmtree, path, True)
    fit_small_model().save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lore_serve(model_dir: Path, db: Path, *extra: str, timeout_s: float = 60.0):
    """``lore serve MODEL_DIR --backbone hashing-64 --db DB EXTRA...`` in a subprocess on a
    free loopback port; returns (process, url) once ``/health`` answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "lore_rm.cli", "serve", str(model_dir), "--backbone",
           f"hashing-{D}", "--port", str(port), "--db", str(db), "--log-level", "warning",
           *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"lore serve exited: {proc.stdout.read().decode()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("lore serve did not come up")
        time.sleep(0.2)


def stop_lore_serve(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def wait_until(condition, seconds: float = 20.0) -> None:
    """Poll ``condition`` until it holds (a server thread's log line, say); fail after
    ``seconds`` instead of sleeping a fixed time that a loaded machine may overrun."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {seconds} s: {condition}")
        time.sleep(0.02)
