"""Memory soak of ``lore serve`` (``bench/serve_load.py --soak SECONDS``): one worker over the
tests' tiny random Llama, driven for SECONDS by varied traffic while the server's resident
memory is sampled.

Traffic (``--clients`` loops on one keep-alive connection each): ``/get_reward`` batches of 1
to 16 with texts of 1 to 400 words (known words and fresh random strings, so tokenizer and
padding shapes keep changing) labelled with model users, a fixed pool of onboarded users and
ever-new unknown ids; ``/reward`` with per-conversation users; onboarding posts to a pool of
``--soak-users`` users; ``GET /users/{id}`` and ``/model-info``. The pool is fixed so that the
only state the traffic should grow is bounded (one weight row per pool user, their stored
comparisons live in SQLite, not memory).

Every ``--sample-every`` seconds: elapsed time, the server's RSS (``/proc/PID/status``
VmRSS) and requests served so far. Printed as it goes, written to ``--json`` (default
``serve_soak.json``) and, when matplotlib is importable, to a PNG next to it.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import tempfile
import time
from pathlib import Path

import serve_load as sl


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def varied_text(rng: random.Random) -> str:
    n = int(rng.choice([1, 3, 10, 30, 100, 400]) * rng.uniform(0.5, 1.0)) + 1
    words = [
        rng.choice(sl.WORDS)
        if rng.random() < 0.7
        else "".join(rng.choices(string.ascii_lowercase + "éß中", k=rng.randint(2, 12)))
        for _ in range(n)
    ]
    return " ".join(words)


def request(rng: random.Random, model_users: list[str], pool: list[str], k: int):
    """One (method, path, body) drawn from the soak's mix."""
    roll = rng.random()
    users = model_users + pool + [f"stranger-{k}-{rng.randint(0, 10**9)}"]
    if roll < 0.55:
        batch = rng.choice([1, 1, 2, 4, 16])
        prompts = [
            f"<|im_start|>user\n{varied_text(rng)}<|im_end|>\n<|im_start|>assistant\n"
            for _ in range(batch)
        ]
        return "POST", "/get_reward", {
            "query": [p + varied_text(rng) + "<|im_end|>" for p in prompts],
            "prompts": prompts,
            "labels": [rng.choice(users) for _ in range(batch)],
        }  # fmt: skip
    if roll < 0.80:
        n = rng.choice([1, 3, 8])
        convs = [
            [
                {"role": "user", "content": varied_text(rng)},
                {"role": "assistant", "content": varied_text(rng)},
            ]
            for _ in range(n)
        ]
        return "POST", "/reward", {"users": [rng.choice(users) for _ in range(n)],
                                   "conversations": convs}  # fmt: skip
    if roll < 0.90:
        comps = [
            {"prompt": varied_text(rng), "chosen": varied_text(rng), "rejected": varied_text(rng)}
            for _ in range(rng.choice([1, 2, 4]))
        ]
        return "POST", f"/users/{rng.choice(pool)}/comparisons", {"comparisons": comps}
    if roll < 0.97:
        return "GET", f"/users/{rng.choice(users)}", None
    return "GET", "/model-info", None


async def drive(url: str, seconds: float, clients: int, model_users, pool, seed, counter):
    import httpx

    async def client(i: int, deadline: float) -> None:
        rng = random.Random(seed * 1000 + i)
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            k = 0
            while time.monotonic() < deadline:
                method, path, body = request(rng, model_users, pool, k)
                r = await c.request(method, path, json=body)
                counter["requests"] += 1
                counter["errors"] += r.status_code != 200
                k += 1

    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(i, deadline) for i in range(clients)))


async def sample(pid: int, seconds: float, every: float, counter, curve: list[dict]):
    t0 = time.monotonic()
    while True:
        t = time.monotonic() - t0
        point = {"t_s": round(t, 1), "rss_mb": round(rss_mb(pid), 1), **counter}
        curve.append(point)
        print(
            f"{point['t_s']:7.1f} s  RSS {point['rss_mb']:8.1f} MB  "
            f"{point['requests']:7d} requests ({point['errors']} errors)",
            flush=True,
        )
        if t >= seconds:
            return
        await asyncio.sleep(min(every, seconds - t + 0.01))


def plot(curve: list[dict], png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([p["t_s"] for p in curve], [p["rss_mb"] for p in curve], marker=".")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("server RSS (MB)")
    ax2 = ax.twinx()
    ax2.plot([p["t_s"] for p in curve], [p["requests"] for p in curve], color="grey", ls="--")
    ax2.set_ylabel("requests served (dashed)")
    ax.set_title("lore serve memory soak (tiny Llama, 1 worker)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return True


def soak_main(args) -> dict:
    out = args.json or Path("serve_soak.json")
    print(
        f"soak: {args.soak:g} s, loopback, lore serve --workers 1, tiny Llama (fp32, CPU), "
        f"{args.clients} clients, onboarding pool {args.soak_users} users, RSS every "
        f"{args.sample_every:g} s; load average before: {sl.load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="lore-serve-soak-") as tmp:
        root = Path(tmp)
        backbone, model_dir, users = sl.tiny_llama_model(root, args.seed)
        proc, url = sl.start_server(
            model_dir, root / "soak.sqlite", sl.free_port(), 1, str(backbone),
            ("--dtype", "fp32", "--torch-threads", str(args.torch_threads)),
        )  # fmt: skip
        counter = {"requests": 0, "errors": 0}
        curve: list[dict] = []
        pool = [f"soak-user-{i}" for i in range(args.soak_users)]

        async def both() -> None:
            await asyncio.gather(
                drive(url, args.soak, args.clients, users[:10], pool, args.seed, counter),
                sample(proc.pid, args.soak, args.sample_every, counter, curve),
            )

        try:
            asyncio.run(both())
        finally:
            sl.stop_server(proc)
    rss = [p["rss_mb"] for p in curve]
    half = len(rss) // 2
    summary = {
        "start_mb": rss[0],
        "peak_mb": max(rss),
        "end_mb": rss[-1],
        "second_half_growth_mb": rss[-1] - rss[half],
        "requests": counter["requests"],
        "errors": counter["errors"],
    }
    print(
        f"RSS: start {summary['start_mb']:.1f} MB, peak {summary['peak_mb']:.1f} MB, end "
        f"{summary['end_mb']:.1f} MB; growth over the second half "
        f"{summary['second_half_growth_mb']:+.1f} MB; {counter['requests']} requests, "
        f"{counter['errors']} errors",
        flush=True,
    )
    result = {"summary": summary, "curve": curve, "settings": {
        "seconds": args.soak, "clients": args.clients, "pool": args.soak_users,
        "sample_every_s": args.sample_every, "torch_threads": args.torch_threads}}  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    png = out.with_suffix(".png")
    print(f"wrote {out}" + (f" and {png}" if plot(curve, png) else " (no matplotlib: no PNG)"))
    return result
