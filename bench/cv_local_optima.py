"""Why cross-validation holding out comparisons undervalued rank 4 on the PersonalLLM-sized
problem (suite's (e)). The search now holds out whole users by default (``cv_holdout``,
bench/cv_holdout.py), which sees rank 4; this script measures the old scheme's fold.

One cross-validation fold's training part (80% of every seen user's comparisons, the search's
fold 0) is fitted at one (rank, ridge) cell from several starts, and each end point is scored
the same way. Every fit minimises the SAME objective on the SAME rows, so a lower final
objective is a better optimum of that problem; held-out loss and accuracy are on the fold's
other 20% (as the search scores it), seen test on the seen users' unseen prompts (which no fit
here ever saw), unseen on new users after their 9-shot fit.

Starts:

* ``fold start``: the informed start computed on the fold's own rows, then the weak -> strong
  ridge path the search follows (what the search scores);
* ``true basis``: the planted basis and weights (an oracle start, never available; shows that
  a better optimum of the fold's problem exists and how it scores);
* ``full-data solution`` (``--with-full``): the cell fitted on all rows first, then the fold's
  problem from there (it has seen the held-out rows, so its held-out scores are optimistic;
  its objective and seen-test accuracy are fair).

    python bench/cv_local_optima.py [--seed 0] [--rank 4] [--weight-decay 0.01] [--with-full]

About 3 minutes per start on 2 cores (plus 1 minute to draw the population).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from lore_rm import FitConfig, LowRankReward, PopulationConfig, simulate_population
from lore_rm.fit.selection import _held_out_scores, user_folds
from lore_rm.fit.solvers import PATH_TOL, feature_scale, ridge_path, solve_lbfgs
from lore_rm.fit.start import initial_point

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import PLANTED  # noqa: E402


def subspace_cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    return torch.linalg.svdvals(qa.T @ qb).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--with-full", action="store_true")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    pop = simulate_population(PopulationConfig(seed=args.seed, **PLANTED["personal"]))
    split = pop.split
    seen = split.seen_train
    data = seen.to(dtype=torch.float32).compact(centre=True).with_user_ids(seen.user_ids)
    cfg = FitConfig(weight_decay=args.weight_decay, seed=args.seed)
    sigma = feature_scale(data, cfg.standardize)
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # the search's fold draw
    held_out = (user_folds(data, cfg.cv_folds, gen) == 0)[None]
    fold_rows = (~held_out).to(torch.float32)
    path = ridge_path(args.weight_decay, cfg)
    truth = pop.true_basis.float() * sigma[:, None]

    def fit(rows, basis, logits, ridges):
        for i, decay in enumerate(ridges):
            step = cfg if i == len(ridges) - 1 else replace(cfg, tol=max(cfg.tol, PATH_TOL))
            res = solve_lbfgs(data, sigma, basis, logits, [decay], step, None, rows)
            basis, logits = res.basis, res.logits
        return res

    def report(name: str, res, seconds: float) -> None:
        loss, acc = _held_out_scores(data, sigma, res.basis, res.logits, held_out, cfg.scale)
        model = LowRankReward.from_arrays(
            res.basis[0] / sigma[:, None], res.logits[0].softmax(-1), list(data.user_ids)
        )
        seen_test = model.score(split.seen_test)
        model.personalize(split.unseen_fewshot)
        cos = ", ".join(f"{c:.2f}" for c in subspace_cosines(res.basis[0], truth))
        print(
            f"{name:22s} {res.loss[-1]:10.5f} {float(loss[0]):9.4f} {float(acc[0]):8.4f} "
            f"{seen_test:9.4f} {model.score(split.unseen_test):7.4f}  {cos}  ({seconds:.0f} s)",
            flush=True,
        )

    print(
        f"(e) seed {args.seed}, rank {args.rank}, ridge {args.weight_decay:g}, fold 0 of "
        f"{cfg.cv_folds} ({int(fold_rows.sum())} of {data.n} rows); cosines: principal angles "
        "of the fitted basis to the planted one"
    )
    print(
        f"{'start':22s} {'objective':>10s} {'held loss':>9s} {'held acc':>8s} "
        f"{'seen test':>9s} {'unseen':>7s}  subspace cosines"
    )
    t0 = time.perf_counter()
    rows = (~held_out[0]).nonzero()[:, 0]
    basis, logits = initial_point(data, sigma, args.rank, cfg.init, gen, rows=rows)
    report(
        "fold start + path",
        fit(fold_rows, basis[None], logits[None], path),
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    true_logits = pop.true_weights["seen"].float().clamp_min(1e-4).log()
    true_logits = true_logits - true_logits.mean(1, keepdim=True)
    if args.rank == truth.shape[1]:
        res = fit(fold_rows, truth[None], true_logits[None], path[-1:])
        report("true basis (oracle)", res, time.perf_counter() - t0)
    else:
        print(f"true basis (oracle): skipped, the planted rank is {truth.shape[1]}")
    if args.with_full:
        t0 = time.perf_counter()
        basis, logits = initial_point(data, sigma, args.rank, cfg.init, gen)
        full = fit(torch.ones_like(fold_rows), basis[None], logits[None], path)
        report("all rows (not a fold)", full, time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = fit(fold_rows, full.basis, full.logits, path[-1:])
        report("full-data solution", res, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
