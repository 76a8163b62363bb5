"""Scale: fit time, peak memory and time per objective evaluation against the bandwidth floor.

Each cell is one default fit at a fixed rank and ridge (K, weight_decay = 0.1: no
cross-validation; the ridge path and the learned few-shot prior included) of a planted population
(simulate_population: 47 training comparisons per seen user, 8 responses per prompt), run
in a fresh child process. Axes are swept one at a time from a base cell (1,000 users,
d = 1024, K = 5, 16k texts): users 100 -> 100k, d 384 -> 4096, K 1 -> 50; then the
PersonalLLM-sized cell (d = 4096, 83k texts, 1000 + 500 users) and the whole
``lore evaluate`` protocol on it (run_protocol with the command's defaults; with
``--weight-decay W`` every rank is fitted at that fixed ridge instead of its cross-validated
one, as ``lore evaluate --weight-decay W`` does). The protocol prints each rank's fit time and
its seen-test and unseen-test accuracy.

Per cell:
  fit s        wall time of LowRankReward(rank=K, weight_decay=0.1).fit on seen_train
  evals        objective + gradient evaluations (calls of X.T @ G, counted during the fit)
  fit/eval ms  fit time / evals (everything included: standardisation, line search, start)
  eval ms      one X @ V plus one X.T @ G on the compacted table (median of 3)
  floor ms     2 x table bytes / copy bandwidth (reading the used rows twice)
  table MB     used rows x d x 4 bytes
  RSS MB       resident before the fit; peak MB: the fit's high-water mark (VmHWM, reset
               before the fit); +/table: (peak - RSS before) / table, the fit's own growth
simulate_population forms the difference rows a block at a time (it formed all of them at
once: 4.7M x 1024 float32 = 19 GB at 100k users), so every cell runs in a few GB.

Copy bandwidth: bytes of a 512 MiB float32 tensor / the time of copying it into another
allocated one (median of 5).

    python bench/scale.py --quick          # a small grid, minutes
    python bench/scale.py                  # the full grid + PersonalLLM size (long)
    python bench/scale.py --cells users --personal   # choose parts
    python bench/scale.py --cells users --users 100000 --threads 1   # one users cell
    python bench/scale.py --cells '' --evaluate --weight-decay 0.1   # protocol, fixed ridge
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lore_rm.threads import pin_threads, resolve_threads

BASE = {"users": 1000, "d": 1024, "k": 5, "prompts": 2000}
AXES = {
    "users": [100, 1000, 10_000, 100_000],
    "d": [384, 1024, 4096],
    "k": [1, 5, 20, 50],
}
QUICK = {"users": [100, 1000, 10_000], "d": [384, 1024], "k": [1, 5, 20]}
#: a fixed ridge: each cell is one fit (its ridge path included), no cross-validation
WEIGHT_DECAY = 0.1
PERSONAL = {"users": 1000, "d": 4096, "k": 5, "prompts": 10402, "unseen": 500}


def population_config(cell: dict):
    from lore_rm import PopulationConfig

    return PopulationConfig(
        d=cell["d"],
        n_seen=cell["users"],
        n_unseen=cell.get("unseen", 10),
        train_per_user=47,
        test_per_user=40 if "unseen" in cell else 10,
        fewshot_per_user=9,
        n_prompts=cell["prompts"],
        responses_per_prompt=8,
    )


def reset_peak() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes (ru_maxrss for VmHWM elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_time(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def copy_bandwidth(mib: int = 512) -> float:
    """Bytes per second of copying a float32 tensor into another already in memory (a
    clone would also time the page faults of its fresh allocation)."""
    x, y = torch.ones(mib << 18), torch.zeros(mib << 18)
    y.copy_(x)
    return x.numel() * 4 / median_time(lambda: y.copy_(x), 5)


def count_backprojections():
    """Count calls of ``Comparisons.backproject`` (one per objective + gradient evaluation)."""
    from lore_rm.comparisons import Comparisons

    inner = Comparisons.backproject
    counter = {"n": 0}

    def counted(self, grad):
        counter["n"] += 1
        return inner(self, grad)

    Comparisons.backproject = counted  # type: ignore[method-assign]
    return counter


def child_fit(cell: dict) -> dict:
    from lore_rm import LowRankReward, simulate_population

    t0 = time.perf_counter()
    split = simulate_population(population_config(cell)).split
    sim_s = time.perf_counter() - t0
    data = split.seen_train
    before = rss("VmRSS")
    peak_reset = reset_peak()
    counter = count_backprojections()
    t0 = time.perf_counter()
    LowRankReward(rank=cell["k"], weight_decay=WEIGHT_DECAY).fit(data, split.reference_head)
    fit_s = time.perf_counter() - t0
    peak = rss("VmHWM")
    evals = counter["n"]
    used = data.compact(centre=True)
    v = torch.randn(used.d, cell["k"])
    g = torch.randn(used.n, cell["k"])
    eval_s = median_time(lambda: used.backproject(used.project(v) + g), 3)
    return {
        "sim_s": sim_s,
        "fit_s": fit_s,
        "evals": evals,
        "eval_s": eval_s,
        "table_bytes": used.table.numel() * 4,
        "comparisons": data.n,
        "rss_before": before,
        "peak": peak,
        "peak_reset": peak_reset,
    }


def child_evaluate(cell: dict) -> dict:
    from lore_rm import simulate_population
    from lore_rm.evaluate.protocols import run_protocol

    t0 = time.perf_counter()
    split = simulate_population(population_config(cell)).split
    sim_s = time.perf_counter() - t0
    before = rss("VmRSS")
    peak_reset = reset_peak()
    t0 = time.perf_counter()
    settings = {} if cell.get("weight_decay") is None else {"weight_decay": cell["weight_decay"]}
    result = run_protocol(split, range(7), (0.0,), (5, 10, 20, 30, 40, 50), 20, **settings)
    seconds = time.perf_counter() - t0
    return {
        "sim_s": sim_s,
        "seconds": seconds,
        "rss_before": before,
        "peak": rss("VmHWM"),
        "peak_reset": peak_reset,
        "selected_rank": result.selected["rank"] if result.selected else None,
        "ranks": [
            {k: r[k] for k in ("rank", "fit_seconds", "seen_test", "unseen_test")}
            for r in result.rows
        ],
        "comparisons": split.seen_train.n + split.seen_test.n + split.unseen_test.n,
    }


def run_child(kind: str, cell: dict, threads: int, timeout: float) -> dict | str:
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(cell), "--threads", str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"not finished in {timeout:.0f} s"
    if out.returncode:
        last = out.stderr.strip().splitlines()[-1:]
        return f"failed (exit status {out.returncode}){': ' + last[0] if last else ''}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def cells(axes: dict[str, list[int]], chosen: list[str]) -> list[dict]:
    out: list[dict] = []
    for axis in chosen:
        for value in axes[axis]:
            cell = {**BASE, axis: value}
            if cell not in out:
                out.append(cell)
    return out


def fit_line(cell: dict, r: dict | str, bandwidth: float) -> str:
    head = f"{cell['users']:>7} {cell['d']:>5} {cell['k']:>3} {cell['prompts'] * 8:>6}"
    if isinstance(r, str):
        return f"{head}  {r}"
    mb = 1 << 20
    floor = 2 * r["table_bytes"] / bandwidth
    per_eval = r["fit_s"] / max(r["evals"], 1)
    return (
        f"{head} {r['comparisons']:>9} {r['fit_s']:>7.1f} {r['evals']:>5} "
        f"{per_eval * 1e3:>11.1f} {r['eval_s'] * 1e3:>8.1f} {floor * 1e3:>8.1f} "
        f"{r['eval_s'] / floor:>6.1f}x {r['table_bytes'] / mb:>8.0f} {r['rss_before'] / mb:>7.0f} "
        f"{r['peak'] / mb:>7.0f} {(r['peak'] - r['rss_before']) / r['table_bytes']:>6.1f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="users 100..10k, d 384..1024, K 1..20")
    p.add_argument("--cells", default="users,d,k", help="axes to sweep ('' = none)")
    p.add_argument("--users", help="comma-separated user counts: the users axis's values")
    p.add_argument("--skip-quick", action="store_true", help="full grid less the --quick cells")
    p.add_argument("--personal", action="store_true", help="the PersonalLLM-sized fit")
    p.add_argument("--evaluate", action="store_true", help="lore evaluate at PersonalLLM size")
    p.add_argument(
        "--weight-decay",
        type=float,
        help="--evaluate with this fixed ridge (default: the cross-validated one per rank)",
    )
    p.add_argument("--threads", default="auto", help="torch threads (default: lore's auto)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per cell")
    p.add_argument("--json-out", type=Path, help="also write every cell's raw figures here")
    p.add_argument("--child", nargs=2, metavar=("KIND", "CELL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    threads = resolve_threads(args.threads)
    torch.set_num_threads(threads)
    pin_threads(threads)  # the fits' threads='auto' keeps it
    if args.child:
        kind, cell = args.child[0], json.loads(args.child[1])
        print(json.dumps((child_fit if kind == "fit" else child_evaluate)(cell)))
        return
    full = not args.quick
    bandwidth = copy_bandwidth()
    print(
        f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; copy bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    print(
        f"\n{'users':>7} {'d':>5} {'K':>3} {'texts':>6} {'compars':>9} {'fit s':>7} "
        f"{'evals':>5} {'fit/eval ms':>11} {'eval ms':>8} {'floor ms':>8} {'/floor':>7} "
        f"{'table MB':>8} {'RSS MB':>7} {'peak MB':>7} {'+/table':>7}"
    )
    chosen = [a for a in args.cells.split(",") if a]
    axes = AXES if full else QUICK
    if args.users:
        axes = {**axes, "users": [int(u) for u in args.users.split(",")]}
    todo = cells(axes, chosen)
    if full and args.skip_quick:
        todo = [c for c in todo if c not in cells(QUICK, chosen)]
    if args.personal:
        todo.append(PERSONAL)
    raw: list[dict] = []
    for cell in todo:
        r = run_child("fit", cell, threads, args.timeout)
        print(fit_line(cell, r, bandwidth), flush=True)
        raw.append({"cell": cell, "result": r})
    if args.evaluate:
        cell = {**PERSONAL, "weight_decay": args.weight_decay}
        r = run_child("evaluate", cell, threads, args.timeout)
        if isinstance(r, str):
            print(f"\nlore evaluate protocol at PersonalLLM size: {r}")
        else:
            mb = 1 << 20
            print(
                f"\nlore evaluate protocol at PersonalLLM size (ranks 0..6, shots 5..50 x 20 "
                f"trials, {r['comparisons']:,} comparisons): {r['seconds']:.0f} s, peak "
                f"{r['peak'] / mb:.0f} MB (RSS before {r['rss_before'] / mb:.0f} MB), "
                f"selected rank {r['selected_rank']}"
            )
            for row in r["ranks"]:
                print(
                    f"  rank {row['rank']}: {row['fit_seconds']:.1f} s, seen test "
                    f"{row['seen_test']:.4f}, unseen test {row['unseen_test']:.4f}"
                )
        raw.append({"cell": {**cell, "evaluate": True}, "result": r})
    print(f"copy bandwidth at the end: {copy_bandwidth() / 1e9:.1f} GB/s")
    if args.json_out:
        args.json_out.write_text(json.dumps({"bandwidth": bandwidth, "cells": raw}, indent=1))


if __name__ == "__main__":
    main()
