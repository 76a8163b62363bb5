"""Load test of ``lore serve`` on loopback: throughput and latency of ``/get_reward``, and no
lost writes under concurrent onboarding.

Bounded: every phase runs for ``--seconds``; the server (a ``lore serve`` subprocess on
127.0.0.1 with ``--workers`` uvicorn processes sharing one SQLite file) is stopped at the end.

    .venv/bin/python bench/serve_load.py                      # hashing-64 stand-in backbone
    .venv/bin/python bench/serve_load.py --workers 1 --seconds 3 --json out.json
    .venv/bin/python bench/serve_load.py --micro-batching      # tiny Llama, batching off vs on
    .venv/bin/python bench/serve_load.py --soak 600            # 10-minute memory soak

Phases:
1. ``/get_reward`` with batch size 1 and 16, ``--clients`` concurrent clients (asyncio,
   one keep-alive connection each): requests/s, samples/s, p50 / p99 latency;
2. onboarding: ``--clients`` clients each post ``--posts`` requests of ``--per-post``
   comparisons to users drawn from a small pool (new and seen users, so writes collide on
   the same users), while the first phase's traffic keeps going; then the database is read
   directly: comparisons stored == comparisons posted, and each user's served weights were
   fitted on all of that user's comparisons.

``--micro-batching`` instead starts two one-worker servers over the tests' tiny random Llama
reward model (fp32, CPU), micro-batching off (``--micro-batch 1``) and on, and drives each in
turn, ``--repeats`` interleaved rounds, with ``--clients`` (64) single-sample clients and with
one client: requests/s, p50 / p99 latency and the server's CPU time per request, side by side.

``--soak SECONDS`` instead runs a memory soak: varied traffic against one tiny-Llama worker,
its RSS sampled every ``--sample-every`` seconds (``bench/serve_soak.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

WORDS = (
    "apple banana cherry delta echo forest garden harbor island jungle kettle lemon mountain "
    "night ocean piano quiet river sunny tiger umbrella violet winter yellow zebra"
).split()


def build_model(folder: Path, d: int, seed: int, backbone: str | None = None) -> list[str]:
    """Fit a small rank-4 model on a simulated population (d wide) for ``backbone`` (default
    ``hashing-<d>``); return its user ids."""
    from lore_rm import LowRankReward
    from lore_rm.evaluate.simulate import simulate_population

    pop = simulate_population(d=d, n_seen=40, n_unseen=4, train_per_user=30, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(
            rank=4, n_iter=30, backbone=backbone or f"hashing-{d}", seed=seed
        ).fit(pop.split.seen_train, pop.split.reference_head)
    model.save_pretrained(folder)
    return list(model.users_)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model_dir: Path, db: Path, port: int, workers: int, backbone: str, extra: tuple[str, ...] = ()
):
    cmd = [
        sys.executable,
        "-m",
        "lore_rm.cli",
        "serve",
        str(model_dir),
        "--backbone",
        backbone,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        str(db),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lore serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("lore serve did not come up within 90 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def reward_body(rng: random.Random, batch: int, users: list[str]) -> dict:
    prompts = [
        f"<|im_start|>user\n{text(rng, 8)}<|im_end|>\n<|im_start|>assistant\n" for _ in range(batch)
    ]
    return {
        "query": [p + text(rng, 30) + "<|im_end|>" for p in prompts],
        "prompts": prompts,
        "labels": [rng.choice(users) for _ in range(batch)],
    }


class RawClient:
    """One keep-alive HTTP/1.1 connection posting JSON: a load generator that costs ~0.1 ms
    of CPU per request (httpx costs several ms with 64 connections in one process, and the
    clients share the server's cores)."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json"
            f"\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(h.lower().split(":", 1) for h in lines[1:] if ":" in h)
        length = int(fields["content-length"])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def reward_load(
    url: str, batch: int, clients: int, seconds: float, users: list[str], seed: int
) -> dict:
    """``clients`` concurrent loops, one connection each, posting ``/get_reward`` bodies
    (encoded before the clock starts) for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    bodies = [
        [
            json.dumps(reward_body(rng, batch, users)).encode()
            for rng in [random.Random(seed * 1000 + i)]
            for _ in range(16)
        ]
        for i in range(clients)
    ]

    async def client(mine: list[bytes], deadline: float) -> None:
        nonlocal errors
        c = RawClient(url)
        try:
            k = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status, _ = await c.post("/get_reward", mine[k % len(mine)])
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
                k += 1
        finally:
            c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(mine, t0 + seconds) for mine in bodies))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "batch": batch,
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / wall,
        "samples_per_s": len(latencies) * batch / wall,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "wall_s": wall,
        "latencies_ms": lat.tolist(),
    }


async def onboarding_load(
    url: str, clients: int, posts: int, per_post: int, user_pool: list[str], seed: int
) -> dict:
    posted: dict[str, int] = {}
    failures: list[str] = []
    latencies: list[float] = []

    async def client(i: int) -> None:
        rng = random.Random(seed * 7919 + i)
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            for k in range(posts):
                user = rng.choice(user_pool)
                body = {
                    "comparisons": [
                        {"prompt": text(rng, 6), "chosen": text(rng, 12), "rejected": text(rng, 12)}
                        for _ in range(per_post)
                    ]
                }
                t0 = time.perf_counter()
                r = await c.post(f"/users/{user}/comparisons", json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    posted[user] = posted.get(user, 0) + per_post
                else:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                del k

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "posts": len(latencies),
        "failures": failures[:5],
        "n_failures": len(failures),
        "posted_per_user": posted,
        "posted_total": sum(posted.values()),
        "posts_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def check_database(db: Path, posted: dict[str, int]) -> dict:
    con = sqlite3.connect(db)
    try:
        (total,) = con.execute("SELECT COUNT(*) FROM comparisons").fetchone()
        per_user = dict(con.execute("SELECT user_id, COUNT(*) FROM comparisons GROUP BY user_id"))
        n_fit = dict(con.execute("SELECT user_id, n_fit FROM users"))
    finally:
        con.close()
    stale = sorted(u for u, n in per_user.items() if n_fit.get(u) != n)
    return {
        "db_total": int(total),
        "per_user_match": per_user == posted,
        "stale_users": stale,  # users whose stored weights miss some of their comparisons
    }


async def main_async(args, url: str, users: list[str], db: Path) -> dict:
    results: dict = {"reward": []}
    for batch in (1, 16):
        r = await reward_load(
            url, batch, args.clients, args.seconds, users + ["unknown-x"], args.seed
        )
        results["reward"].append(r)
        del r["latencies_ms"]
        print(
            f"/get_reward batch {batch:2d}: {r['requests_per_s']:8.1f} req/s "
            f"{r['samples_per_s']:9.1f} samples/s  p50 {r['p50_ms']:7.2f} ms  "
            f"p99 {r['p99_ms']:7.2f} ms  ({r['requests']} requests, {r['errors']} errors)",
            flush=True,
        )
    b1, b16 = results["reward"]
    print(
        f"batch 16 / batch 1: {b16['samples_per_s'] / b1['samples_per_s']:.1f}x samples/s, "
        f"{b16['p50_ms'] / b1['p50_ms']:.2f}x p50 latency",
        flush=True,
    )
    pool = [f"new{i}" for i in range(args.new_users)] + users[:3]
    background = asyncio.create_task(
        reward_load(url, 1, max(1, args.clients // 4), args.seconds, users, args.seed + 1)
    )
    ob = await onboarding_load(url, args.clients, args.posts, args.per_post, pool, args.seed)
    results["reward_during_onboarding"] = await background
    del results["reward_during_onboarding"]["latencies_ms"]
    results["onboarding"] = ob
    print(
        f"onboarding: {ob['posts']} posts x {args.per_post} comparisons from {args.clients} "
        f"clients over {len(pool)} users: {ob['posts_per_s']:.1f} posts/s, p50 "
        f"{ob['p50_ms']:.1f} ms, p99 {ob['p99_ms']:.1f} ms, {ob['n_failures']} failures",
        flush=True,
    )
    return results


# ---- micro-batching: the same server with it off and on -------------------------------------
def tiny_llama_model(root: Path, seed: int) -> tuple[Path, Path, list[str]]:
    """The tests' tiny random Llama reward model as backbone, and a model fitted for it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import build_tiny_reward_model

    backbone = build_tiny_reward_model(root / "tiny-llama")
    model_dir = root / "model"
    users = build_model(model_dir, 32, seed, backbone=str(backbone))
    return backbone, model_dir, users


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pooled(runs: list[dict]) -> dict:
    """Requests/s over all runs' wall time; percentiles over all their latencies; the
    server's CPU time per request (what the server costs, whatever share of the CPUs other
    jobs leave it)."""
    lat = np.concatenate([r["latencies_ms"] for r in runs])
    return {
        "requests": int(lat.size),
        "errors": sum(r["errors"] for r in runs),
        "requests_per_s": lat.size / sum(r["wall_s"] for r in runs),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "server_cpu_ms": 1000 * sum(r["server_cpu_s"] for r in runs) / lat.size,
    }


async def micro_batching_phases(args, servers: dict[str, tuple[int, str]], users: list[str]):
    """``--repeats`` rounds; each drives every server (name -> (pid, url)) in turn, the order
    alternating by round, with ``--clients`` single-sample clients, then with one client."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for k in range(args.repeats):
        names = list(servers) if k % 2 == 0 else list(reversed(servers))
        for name in names:
            pid, url = servers[name]
            for clients in (args.clients, 1):
                cpu = cpu_seconds(pid)
                r = await reward_load(url, 1, clients, args.seconds, users, args.seed + k)
                r["server_cpu_s"] = cpu_seconds(pid) - cpu
                runs.setdefault((name, clients), []).append(r)
    return {f"{name} x{clients}": pooled(rs) for (name, clients), rs in runs.items()}


def micro_batching_main(args) -> dict:
    threads = args.torch_threads
    settings = {
        "off": ("--micro-batch", "1"),
        "on": ("--micro-batch", str(args.micro_batch), "--max-wait-ms", str(args.max_wait_ms)),
    }
    print(
        f"micro-batching: loopback, lore serve --workers 1 --torch-threads {threads}, tiny "
        f"Llama backbone (fp32, CPU), /get_reward batch 1, {args.clients} clients and 1 "
        f"client, {args.repeats} x {args.seconds:g} s interleaved; on = --micro-batch "
        f"{args.micro_batch} --max-wait-ms {args.max_wait_ms:g}; {os.cpu_count()} CPUs, load "
        f"average before: {load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="lore-serve-bench-") as tmp:
        root = Path(tmp)
        backbone, model_dir, users = tiny_llama_model(root, args.seed)
        procs, servers = [], {}
        try:
            for name, extra in settings.items():
                common = ("--dtype", "fp32", "--torch-threads", str(threads))
                proc, url = start_server(
                    model_dir, root / f"{name}.sqlite", free_port(), 1, str(backbone),
                    common + extra,
                )  # fmt: skip
                procs.append(proc)
                servers[name] = (proc.pid, url)
            res = asyncio.run(micro_batching_phases(args, servers, users + ["unknown-x"]))
        finally:
            for proc in procs:
                stop_server(proc)
    many, one = args.clients, 1
    rows = [
        (f"{many} clients: req/s", "requests_per_s", many),
        (f"{many} clients: p50 ms", "p50_ms", many),
        (f"{many} clients: p99 ms", "p99_ms", many),
        (f"{many} clients: server CPU ms/req", "server_cpu_ms", many),
        ("1 client: req/s", "requests_per_s", one),
        ("1 client: p50 ms", "p50_ms", one),
        ("1 client: p99 ms", "p99_ms", one),
    ]
    print(f"{'':32s} {'off':>9s} {'on':>9s} {'on/off':>7s}")
    for label, key, clients in rows:
        off, on = res[f"off x{clients}"][key], res[f"on x{clients}"][key]
        print(f"{label:32s} {off:9.2f} {on:9.2f} {on / off:6.2f}x")
    speedup = res[f"on x{many}"]["requests_per_s"] / res[f"off x{many}"]["requests_per_s"]
    p99_on = res[f"on x{many}"]["p99_ms"]
    print(
        f"targets: throughput on/off {speedup:.2f}x (goal >= 4x); p99 at {many} clients on = "
        f"{p99_on:.1f} ms = {p99_on / res[f'off x{many}']['p99_ms']:.2f}x off's at {many} "
        f"clients, {p99_on / res['off x1']['p99_ms']:.1f}x off's with one client; errors: "
        f"{sum(r['errors'] for r in res.values())}",
        flush=True,
    )
    return res | {"settings": vars(args) | {"json": str(args.json) if args.json else None}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=None, help="16 (--micro-batching: 64)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--posts", type=int, default=12, help="onboarding posts per client")
    p.add_argument("--per-post", type=int, default=4)
    p.add_argument("--new-users", type=int, default=5)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--micro-batching",
        action="store_true",
        help="instead: tiny Llama backbone, one worker, micro-batching off vs on",
    )
    p.add_argument("--micro-batch", type=int, default=64, help="with --micro-batching")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="with --micro-batching")
    p.add_argument("--repeats", type=int, default=3, help="with --micro-batching")
    p.add_argument("--torch-threads", type=int, default=1, help="with --micro-batching, --soak")
    p.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="instead: a memory soak of SECONDS over the tiny Llama (bench/serve_soak.py)",
    )
    p.add_argument("--sample-every", type=float, default=10.0, help="with --soak: RSS every s")
    p.add_argument("--soak-users", type=int, default=20, help="with --soak: onboarding pool")
    args = p.parse_args()
    if args.clients is None:
        args.clients = 64 if args.micro_batching else 8 if args.soak else 16
    if args.soak is not None:
        from serve_soak import soak_main

        soak_main(args)
        return
    if args.micro_batching:
        results = micro_batching_main(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return

    print(
        f"loopback, lore serve --workers {args.workers}, backbone hashing-{args.d}, "
        f"{args.clients} clients, {os.cpu_count()} CPUs, load average before: {load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="lore-serve-bench-") as tmp:
        root = Path(tmp)
        users = build_model(root / "model", args.d, args.seed)
        db = root / "serve.sqlite"
        proc, url = start_server(root / "model", db, free_port(), args.workers, f"hashing-{args.d}")
        try:
            results = asyncio.run(main_async(args, url, users, db))
        finally:
            stop_server(proc)
        check = check_database(db, results["onboarding"]["posted_per_user"])
        results["database"] = check
        results["settings"] = vars(args) | {
            "json": str(args.json) if args.json else None,
            "backbone": f"hashing-{args.d}",
            "cpus": os.cpu_count(),
            "loadavg_after": os.getloadavg(),
        }
        ok = (
            check["db_total"] == results["onboarding"]["posted_total"]
            and check["per_user_match"]
            and not check["stale_users"]
            and results["onboarding"]["n_failures"] == 0
        )
        print(
            f"database: {check['db_total']} comparisons stored, "
            f"{results['onboarding']['posted_total']} posted; per-user counts match: "
            f"{check['per_user_match']}; users with stale weights: {check['stale_users']}"
            f" -> {'OK' if ok else 'LOST WRITES'}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
