"""What the model search sees with each cross-validation holdout (``cv_holdout``).

For every (rank, ridge) cell given, the library's own search (``select_settings``) scores the
cell twice on the seen users of one population: holding out a share of every user's
comparisons (``"comparisons"``), and holding out whole users, scored as new users of the
fold's basis (``"users"``, the default). Each cell follows the search's weak -> strong ridge
path (the grid's values below the cell's ridge first), so its scores are the ones the search
ranks. Lower log-loss is better; the search's one-standard-error rule compares losses.

    python bench/cv_holdout.py [--population personal] [--seed 0]
                               [--cells 1:0.1,2:0.1,4:0.01,4:0.1,6:0.1]

Populations are bench/accuracy.py's (demo, high-d, personal; small-text and large-text when
the hh-rlhf data and MiniLM are present). On ``personal`` (the PersonalLLM-sized problem) a
rank-4 cell takes 1-2 minutes per holdout on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from lore_rm import FitConfig
from lore_rm.fit.selection import select_settings
from lore_rm.fit.solvers import feature_scale

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import population  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--population", default="personal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", default="1:0.1,2:0.1,4:0.01,4:0.1,6:0.1", help="rank:ridge,...")
    args = p.parse_args()
    cells = [(int(k), float(w)) for k, w in (c.split(":") for c in args.cells.split(","))]
    warnings.simplefilter("ignore")
    split, _ = population(args.population, args.seed)
    seen = split.seen_train
    data = seen.to(dtype=torch.float32).compact(centre=True).with_user_ids(seen.user_ids)
    base = FitConfig.for_recipe("default", seed=args.seed)
    sigma = feature_scale(data, base.standardize)
    print(
        f"{args.population}, seed {args.seed}: {data.n_users} seen users, {data.n} comparisons, "
        f"{base.cv_folds} folds"
    )
    print(
        f"{'holdout':12s} {'rank':>4s} {'ridge':>7s} {'CV log-loss':>12s} {'± se':>7s} "
        f"{'CV accuracy':>11s} {'seconds':>8s}"
    )
    for holdout in ("comparisons", "users"):
        cfg = replace(base, cv_holdout=holdout)
        for rank, ridge in cells:
            path = [w for w in sorted(cfg.weight_decay_grid) if w < ridge] + [ridge]
            t0 = time.perf_counter()
            sel = select_settings(data, sigma, [rank], path, cfg)
            row = next((r for r in sel.rows if r["weight_decay"] == ridge), None)
            if row is None:  # the search's early exit stopped the path before this ridge
                print(
                    f"{holdout:12s} {rank:4d} {ridge:7g}  (the path stopped at "
                    f"{sel.rows[-1]['weight_decay']:g})"
                )
                continue
            print(
                f"{sel.holdout:12s} {rank:4d} {ridge:7g} {row['cv_loss']:12.4f} "
                f"{row['cv_loss_se']:7.4f} {row['cv_accuracy']:11.4f} "
                f"{time.perf_counter() - t0:8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
