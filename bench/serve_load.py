"""Load test of ``lore serve`` on loopback: throughput and latency of ``/get_reward``, and no
lost writes under concurrent onboarding.

Bounded: every phase runs for ``--seconds``; the server (a ``lore serve`` subprocess on
127.0.0.1 with ``--workers`` uvicorn processes sharing one SQLite file) is stopped at the end.

    .venv/bin/python bench/serve_load.py                      # hashing-64 stand-in backbone
    .venv/bin/python bench/serve_load.py --workers 1 --seconds 3 --json out.json

Phases:
1. ``/get_reward`` with batch size 1 and 16, ``--clients`` concurrent clients (asyncio +
   httpx keep-alive): requests/s, samples/s, p50 / p99 latency;
2. onboarding: ``--clients`` clients each post ``--posts`` requests of ``--per-post``
   comparisons to users drawn from a small pool (new and seen users, so writes collide on
   the same users), while the first phase's traffic keeps going; then the database is read
   directly: comparisons stored == comparisons posted, and each user's served weights were
   fitted on all of that user's comparisons.
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


def build_model(folder: Path, d: int, seed: int) -> list[str]:
    """Fit a small rank-4 model on a simulated population (d wide); return its user ids."""
    from lore_rm import LowRankReward
    from lore_rm.evaluate.simulate import simulate_population

    pop = simulate_population(d=d, n_seen=40, n_unseen=4, train_per_user=30, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(rank=4, n_iter=30, backbone=f"hashing-{d}", seed=seed).fit(
            pop.split.seen_train, pop.split.reference_head
        )
    model.save_pretrained(folder)
    return list(model.users_)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, db: Path, port: int, workers: int, backbone: str):
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


async def reward_load(
    url: str, batch: int, clients: int, seconds: float, users: list[str], seed: int
) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        rng = random.Random(seed * 1000 + i)
        bodies = [reward_body(rng, batch, users) for _ in range(16)]
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            k = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await c.post("/get_reward", json=bodies[k % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200
                k += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
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
    results["onboarding"] = ob
    print(
        f"onboarding: {ob['posts']} posts x {args.per_post} comparisons from {args.clients} "
        f"clients over {len(pool)} users: {ob['posts_per_s']:.1f} posts/s, p50 "
        f"{ob['p50_ms']:.1f} ms, p99 {ob['p99_ms']:.1f} ms, {ob['n_failures']} failures",
        flush=True,
    )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--posts", type=int, default=12, help="onboarding posts per client")
    p.add_argument("--per-post", type=int, default=4)
    p.add_argument("--new-users", type=int, default=5)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    print(
        f"loopback, lore serve --workers {args.workers}, backbone hashing-{args.d}, "
        f"{args.clients} clients, {os.cpu_count()} CPUs, load average before: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
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
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
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
