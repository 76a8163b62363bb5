"""One fit of a small problem: 100 users x 15 comparisons (1,500 rows) at d = 384.

Times one fit at a given cell (no search) for every rank of the grid, median of --repeats in
one process on one torch thread: the joint fit along its ridge path, then the seen users'
shrinkage (``hierarchical``) where the rank is above 1. Real text when the hh-rlhf file is
present (population (f) of ``bench/accuracy.py``: MiniLM embeddings, 100 seen users x 15
training comparisons), else a planted population of the same size.

    python bench/small_fit.py [--ranks 1,2,3,4,6] [--ridges 0.3,3.33333] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from lore_rm import LowRankReward, simulate_population
from lore_rm.threads import pin_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_populations  # noqa: E402


def small_problem(seed: int):
    try:
        return text_populations.shared_real_text(seed).split.seen_train, "real text (f)"
    except text_populations.DataUnavailable as exc:
        pop = simulate_population(
            d=384, true_rank=4, n_seen=100, train_per_user=15, n_prompts=2000, seed=seed
        )
        return pop.split.seen_train, f"planted ({exc})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranks", default="1,2,3,4,6")
    p.add_argument("--ridges", default="0.3,3.33333")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    pin_threads(1)
    data, what = small_problem(args.seed)
    print(f"{what}: {data.n} rows, {data.n_users} users, d = {data.d}; one torch thread")
    print(f"{'rank':>4} {'ridge':>8} {'median s':>9} {'min s':>7} {'path it':>8} {'fit it':>7}")
    for ridge in (float(r) for r in args.ridges.split(",")):
        for rank in (int(k) for k in args.ranks.split(",")):
            times, model = [], None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = LowRankReward(
                        rank=rank, weight_decay=ridge, personalization=1.0, seed=args.seed
                    ).fit(data)
                times.append(time.perf_counter() - t0)
            h = model.history_ if model is not None else {}
            print(
                f"{rank:>4} {ridge:>8g} {statistics.median(times):>9.3f} {min(times):>7.3f} "
                f"{h.get('path_iterations', 0):>8} {h.get('iterations', 0):>7}",
                flush=True,
            )


if __name__ == "__main__":
    main()
