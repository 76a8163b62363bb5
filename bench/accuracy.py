"""Accuracy of the default fit against the best fixed setting chosen in hindsight.

For every population: the default (rank and ridge chosen by cross-validation on the seen
users' training comparisons only), the best fixed (rank, weight_decay) of a grid chosen in
hindsight ON UNSEEN USERS (an oracle-tuned row the default never sees), the pooled rank-1
model, the published recipe, and the oracle where the truth is known.

Populations:
  demo       (a) the `lore demo` planted population (d = 32, 200 + 100 users)
  small-text (b) 50 users over real hh-rlhf answers with opposite preferences (MiniLM)
  large-text (c) 300 users mixing eight measurable text attributes of hh-rlhf answers
  high-d     (d) planted, d = 512, 100 seen users x 40 comparisons: the paper recipe overfits
  personal   (e) PersonalLLM-sized planted problem (d = 4096, 83k texts, 1000 + 500 users);
                 slow on a CPU: only with --populations personal

(b) and (c) need ../shared/data (the hh-rlhf file) and MiniLM; they are skipped with a
message when absent. The first run embeds 4,606 texts (about 6 minutes on 2 cores) into
runs/bench-cache/.

    python bench/accuracy.py [--populations demo,small-text,large-text,high-d] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from lore_rm import LowRankReward, PopulationConfig, four_numbers, simulate_population

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_populations  # noqa: E402

PLANTED = {
    "demo": {},
    "high-d": {"d": 512, "n_seen": 100, "train_per_user": 40, "n_prompts": 2000},
    "personal": {
        "d": 4096,
        "n_seen": 1000,
        "n_unseen": 500,
        "train_per_user": 47,
        "test_per_user": 40,
        "fewshot_per_user": 9,
        "n_prompts": 10402,
        "responses_per_prompt": 8,
    },
}
GRID_RANKS = (1, 2, 4, 6)
GRID_DECAYS = (0.001, 0.01, 0.1, 1.0)
KEYS = ("train", "seen_test", "fewshot_train", "unseen_test")


def population(name: str, seed: int):
    if name in PLANTED:
        pop = simulate_population(PopulationConfig(seed=seed, **PLANTED[name]))
        return pop.split, pop.oracle
    build = {
        "small-text": text_populations.small_real_text,
        "large-text": text_populations.large_real_text,
    }
    pop = build[name](seed)
    return pop.split, pop.oracle


def run(split, seed: int, **kw) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = LowRankReward(seed=seed, **kw).fit(split.seen_train, split.reference_head)
    row = {k: four_numbers(model, split)[k] for k in KEYS}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["rank"] = model.rank_
    row["weight_decay"] = model.config_.weight_decay
    row["warnings"] = sorted({type(w.message).__name__ for w in caught})
    sel = model.history_.get("selection")
    if sel:
        row["search_fits"] = sel["n_fits"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--populations", default="demo,small-text,large-text,high-d")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/accuracy.json"))
    args = p.parse_args()
    results: dict = {}
    fmt = "{:11s} {:30s} {:>6s} {:>6s} {:>6s} {:>6s} {:>7s}"
    print(fmt.format("population", "row", "train", "seen", "fs-tr", "unseen", "sec"))
    for name in args.populations.split(","):
        try:
            split, oracle = population(name, args.seed)
        except text_populations.DataUnavailable as exc:
            print(f"{name:11s} skipped: {exc}")
            continue
        rows = {"default": run(split, args.seed, rank="auto")}
        rows["pooled rank 1"] = run(split, args.seed, rank=1)
        rows["paper recipe, rank 4"] = run(split, args.seed, rank=4, recipe="paper")
        grid = {
            (k, w): run(split, args.seed, rank=k, weight_decay=w)
            for k in GRID_RANKS
            for w in GRID_DECAYS
        }
        k, w = max(grid, key=lambda kw: grid[kw]["unseen_test"])
        rows[f"hindsight best: K={k} wd={w:g}"] = grid[(k, w)]
        if oracle:
            rows["oracle"] = {key: oracle[key] for key in KEYS}
        for label, r in rows.items():
            print(
                fmt.format(
                    name, label, *(f"{r[key]:.3f}" for key in KEYS), f"{r.get('seconds', 0):.1f}"
                )
            )
        d = rows["default"]
        best = grid[(k, w)]["unseen_test"]
        print(
            f"{'':11s} default chose K={d['rank']} wd={d['weight_decay']:g} "
            f"({d.get('search_fits', 0)} search fits); unseen - hindsight best = "
            f"{d['unseen_test'] - best:+.3f}; unseen - pooled = "
            f"{d['unseen_test'] - rows['pooled rank 1']['unseen_test']:+.3f}"
        )
        results[name] = {
            "rows": rows,
            "grid": [{"rank": k, "weight_decay": w, **r} for (k, w), r in grid.items()],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
