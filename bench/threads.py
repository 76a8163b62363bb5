"""One torch thread against two: the same fit, quiet and under CPU contention.

For every population: the default fit (rank and ridge by cross-validation) or a fixed rank
(--rank), timed with 1 and 2 torch threads, on a quiet machine and with one CPU-burning
process per CPU running alongside (--burners). Threads, conditions and repeats are
interleaved; the table shows wall-time medians and the ratio 2 threads / 1 thread. The
four numbers of every fit are compared across thread counts (max absolute difference).

Populations: every one of bench/accuracy.py (planted: demo, d = 32, 200 + 100 users; high-d,
d = 512, 100 users x 40 comparisons; real text: small-text, large-text, shared-text,
mostly-shared, which need the hh-rlhf file, see bench/text_populations.py), and wide (planted,
d = 4096, 300 users x 47 comparisons, 16k texts). --seed picks the population's seed (and the
fit's). Besides the four numbers it compares the chosen cell (rank, ridge, strength) and the
fitted model's bits (basis, user weights, margin scale).

    python bench/threads.py [--populations demo,high-d,wide] [--repeats 3] [--rank auto]
    python bench/threads.py --populations small-text,large-text,shared-text,mostly-shared \
        --repeats 1 --burners 0
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

from lore_rm import LowRankReward, PopulationConfig, four_numbers, simulate_population
from lore_rm.threads import pin_threads, resolve_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import PLANTED, population  # noqa: E402

POPULATIONS = {
    **PLANTED,
    "wide": {
        "d": 4096,
        "n_seen": 300,
        "n_unseen": 100,
        "train_per_user": 47,
        "fewshot_per_user": 9,
        "n_prompts": 2000,
        "responses_per_prompt": 8,
    },
}


@contextlib.contextmanager
def burning(n: int) -> Iterator[None]:
    """``n`` busy-looping Python processes for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them reach the run queue
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def fit_once(
    name: str, rank: int | str, threads: int, cap: float, seed: int
) -> tuple[float, dict | None]:
    """Wall time, four numbers and chosen cell of one fit in a fresh process; (cap, None) past
    ``cap`` s."""
    cmd = [sys.executable, __file__, "--child", name, str(rank), str(threads), str(seed)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, check=True)
    except subprocess.TimeoutExpired:
        return cap, None
    seconds, numbers = json.loads(out.stdout.splitlines()[-1])
    return seconds, numbers


def child(name: str, rank: int | str, threads: int, seed: int) -> None:
    torch.set_num_threads(threads)
    pin_threads(threads)  # the fit's threads='auto' keeps it
    if name in POPULATIONS:
        split = simulate_population(PopulationConfig(seed=seed, **POPULATIONS[name])).split
    else:
        split, _ = population(name, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(rank=rank, seed=seed).fit(split.seen_train, split.reference_head)
    seconds = time.perf_counter() - t0
    cell = f"K={model.rank_} wd={model.config_.weight_decay:g} s={model.personalization_:g}"
    digest = hashlib.sha256(model.basis_.numpy().tobytes())
    digest.update(model.user_weights_.numpy().tobytes())
    digest.update(repr(model.margin_scale_).encode())
    bits = digest.hexdigest()[:12]
    print(json.dumps([seconds, {**four_numbers(model, split), "cell": cell, "bits": bits}]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--populations", default="demo,high-d")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", default="auto", help="'auto' (the default fit) or a fixed rank")
    p.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="busy processes")
    p.add_argument("--cap", type=float, default=120, help="seconds before a fit is cut off")
    p.add_argument("--seed", type=int, default=0, help="the population's seed and the fit's")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        name, r, t, seed = args.child
        return child(name, r if r == "auto" else int(r), int(t), int(seed))
    rank: int | str = args.rank if args.rank == "auto" else int(args.rank)
    cpus = len(os.sched_getaffinity(0))
    print(
        f"torch {torch.__version__}; {os.cpu_count()} CPUs ({cpus} usable), torch default "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f} at start; "
        f"'auto' picks {resolve_threads('auto')} now; contention = {args.burners} busy "
        f"processes; rank {args.rank}; {args.repeats} repeats, interleaved"
    )
    header = (
        f"\n{'population':>13} {'condition':>9} {'1 thread s':>11} {'2 threads s':>12} "
        f"{'2t / 1t':>8} {'max |Δ acc|':>12} {'same bits':>9}  chosen cell(s)"
    )
    rows: list[str] = []
    for name in args.populations.split(","):
        times: dict[tuple[str, int], list[float]] = defaultdict(list)
        numbers: dict[int, list[dict]] = defaultdict(list)
        for rep in range(args.repeats):
            conditions = ("quiet", "busy") if rep % 2 == 0 else ("busy", "quiet")
            conditions = conditions if args.burners else ("quiet",)
            for cond in conditions:
                with burning(args.burners if cond == "busy" else 0):
                    for threads in (1, 2) if rep % 2 == 0 else (2, 1):
                        seconds, acc = fit_once(name, rank, threads, args.cap, args.seed)
                        times[cond, threads].append(seconds)
                        shown = f"{seconds:.2f} s" if acc else f"cut off at {seconds:.0f} s"
                        print(f"  {name} {cond} {threads} thread(s): {shown}", flush=True)
                        if acc:
                            numbers[threads].append(acc)
        diff = max(
            (
                abs(a[k] - b[k])
                for a in numbers[1]
                for b in numbers[2]
                for k in a
                if isinstance(a[k], float)
            ),
            default=float("nan"),
        )
        cells = sorted({a["cell"] for t in (1, 2) for a in numbers[t]})
        same = len({a["bits"] for t in (1, 2) for a in numbers[t]}) == 1
        for cond in ("quiet", "busy") if args.burners else ("quiet",):
            one, two = (statistics.median(times[cond, t]) for t in (1, 2))
            rows.append(
                f"{name:>13} {cond:>9} {one:>11.2f} {two:>12.2f} {two / one:>7.2f}x {diff:>12.1e}"
                f" {'yes' if same else 'no':>9}  {' | '.join(cells)}"
            )
    print(header, *rows, sep="\n")
    print(
        "times: wall-clock medians of the whole fit, each in a fresh process (a fit cut off at "
        "--cap counts as --cap: a lower bound); Δ acc: over the four numbers, all runs; same bits: "
        "every run's basis, user weights and margin scale; one cell listed: every run chose it"
    )


if __name__ == "__main__":
    main()
