"""Active question selection for new users: accuracy curves and selection speed (issue #9).

``accuracy``: on the demo's planted population and on the hh-rlhf simulated-user populations
(bench/text_populations.py; skipped when the data or MiniLM are absent), every unseen user
gets 60 few-shot comparisons; each trial draws a pool of 50 of them per user, and
``lore_rm.evaluate.active_sweep`` asks one question at a time (refit + posterior after
each answer) by expected information gain, by margin uncertainty and at random. Prints
unseen-user test accuracy (mean ± std over trials) against the number of questions asked,
and the acceptance check: information gain after 5 questions vs random after 10.

``speed``: ``select_questions`` of 10 questions each for 10,000 users from 100 candidates
each (d = 32), per criterion and rank, repeats interleaved; the median is printed.

    python bench/active_selection.py [accuracy|speed|all] [--trials 5] [--questions 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lore_rm import Comparisons, LowRankReward, simulate_population
from lore_rm.evaluate.active import active_sweep

sys.path.insert(0, str(Path(__file__).parent))
import text_populations  # noqa: E402

CRITERIA = ("information", "uncertainty", "random")
FEWSHOT, POOL = 60, 50
#: rank and ridge of each population: what the default cross-validation picks there
#: (bench/accuracy.py), fixed here so the fit runs once
SETTINGS = {
    "demo": dict(rank=4, weight_decay=0.001),
    "small-text": dict(rank=2, weight_decay=1.0),
    "large-text": dict(rank=3, weight_decay=0.1),
}


def population(name: str, seed: int, cache_dir: Path):
    if name == "demo":
        pop = simulate_population(seed=seed, fewshot_per_user=FEWSHOT)
        return pop.split, pop.oracle["unseen_test"]
    build = {
        "small-text": text_populations.small_real_text,
        "large-text": text_populations.large_real_text,
    }[name]
    pop = build(seed, cache_dir, sizes={"fewshot": FEWSHOT})
    return pop.split, pop.oracle["unseen_test"]


def accuracy(args) -> None:
    for name, settings in SETTINGS.items():
        try:
            split, oracle = population(name, args.seed, args.cache_dir)
        except text_populations.DataUnavailable as exc:
            print(f"\n{name}: skipped ({exc})")
            continue
        t0 = time.perf_counter()
        model = LowRankReward(**settings).fit(split.seen_train, split.reference_head)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = active_sweep(
            model,
            split,
            args.questions,
            CRITERIA,
            args.trials,
            batch=args.batch,
            pool=POOL,
            seed=args.seed,
        )
        table = {(r["criterion"], r["questions"]): r for r in rows}
        print(
            f"\n{name}: rank {settings['rank']}, {split.unseen_test.n_users} unseen users, "
            f"pool {POOL} per user, batch {args.batch}, {args.trials} trials, oracle "
            f"{oracle:.3f} (fit {fit_s:.0f} s, sweep {time.perf_counter() - t0:.0f} s)"
        )
        print("questions  " + "  ".join(f"{c:>15s}" for c in CRITERIA))
        for q in sorted({r["questions"] for r in rows}):
            cells = [table[(c, q)] for c in CRITERIA]
            print(
                f"{q:9d}  "
                + "  ".join(f"{r['unseen_test']:.4f}±{r['unseen_test_std']:.4f}" for r in cells)
            )
        if (("information", 5) in table) and (("random", 10) in table):
            a, b = table[("information", 5)], table[("random", 10)]
            verdict = "meets" if a["unseen_test"] >= b["unseen_test"] else "MISSES"
            print(
                f"information after 5: {a['unseen_test']:.4f}, random after 10: "
                f"{b['unseen_test']:.4f} -> {verdict} the target (ratio "
                f"{(a['unseen_test'] - 0.5) / (b['unseen_test'] - 0.5):.3f} above chance)"
            )


def speed(args) -> None:
    users, per_user, n, d = 10_000, 100, 10, 32
    g = torch.Generator().manual_seed(args.seed)
    table = torch.randn(4 * per_user * users // 10, d, generator=g)
    rows = users * per_user
    a = torch.randint(table.shape[0], (rows,), generator=g)
    b = (a + 1 + torch.randint(table.shape[0] - 1, (rows,), generator=g)) % table.shape[0]
    ids = [f"u{i:05d}" for i in range(users)]
    cand = Comparisons.from_pairs(
        table, a, b, torch.arange(users).repeat_interleave(per_user), user_ids=ids
    )
    print(f"\nselect_questions: {users} users x {per_user} candidates, {n} questions, d = {d}")
    threads = torch.get_num_threads()
    for k in (1, 4, 8):
        w = torch.distributions.Dirichlet(torch.ones(k)).sample((users,)) if k > 1 else None
        model = LowRankReward.from_arrays(
            torch.randn(d, k, generator=g) / d**0.5,
            w if w is not None else torch.ones(users, 1),
            ids,
        )
        post = model.weights_posterior(users=ids)
        runs = [(c, t) for t in sorted({1, threads}) for c in CRITERIA]
        wall: dict = {r: [] for r in runs}
        cpu: dict = {r: [] for r in runs}
        for _ in range(args.repeats):
            for c, t in runs:  # interleaved: the machine's load hits every variant alike
                torch.set_num_threads(t)
                t0, c0 = time.perf_counter(), time.process_time()
                sel = model.select_questions(cand, n, posterior=post, criterion=c)
                wall[(c, t)].append(time.perf_counter() - t0)
                cpu[(c, t)].append(time.process_time() - c0)
                assert int(sel.counts.min()) == n
        torch.set_num_threads(threads)
        for t in sorted({1, threads}):
            med = {c: statistics.median(wall[(c, t)]) for c in CRITERIA}
            print(
                f"  K = {k}, {t} thread(s): "
                + ", ".join(
                    f"{c} {med[c]:.3f} s (cpu {statistics.median(cpu[(c, t)]):.3f})"
                    for c in CRITERIA
                )
                + f"; information / random {med['information'] / med['random']:.2f}x"
            )
    print(f"  (median of {args.repeats} interleaved repeats; target < 1 s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", nargs="?", choices=("accuracy", "speed", "all"), default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--questions", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/bench-cache"))
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    if args.what in ("speed", "all"):
        speed(args)
    if args.what in ("accuracy", "all"):
        accuracy(args)


if __name__ == "__main__":
    main()
