"""Accuracy of the default fit against the best fixed setting chosen in hindsight.

For every population: the default (rank and ridge chosen by cross-validation on the seen
users' training comparisons only), the best fixed (rank, weight_decay) of a grid chosen in
hindsight ON UNSEEN USERS (an oracle-tuned row the default never sees), the pooled rank-1
model, the published recipe, and the oracle where the truth is known.

Populations:
  demo       (a) the `lore demo` planted population (d = 32, 200 + 100 users)
  small-text (b) 60 users over real hh-rlhf answers with opposite preferences (MiniLM)
  large-text (c) 300 users mixing four measurable text attributes of hh-rlhf answers
  high-d     (d) planted, d = 512, 100 seen users x 40 comparisons: the paper recipe overfits
  personal   (e) PersonalLLM-sized planted problem (d = 4096, 83k texts, 1000 + 500 users);
                 slow on a CPU: only with --populations personal
  prism      PRISM-sized planted problem (d = 4096, 1000 seen users x 15 comparisons, true
             rank 4); only with --populations prism (for its time: --default-only)
  shared-text   (f) 200 users over hh-rlhf answers who share one taste (label noise only),
                    15 train / 15 test per seen user, 15 few-shot per new user
  mostly-shared (g) the same with 75% one shared taste + 25% each user's own direction
  uneven-text   large-text with the seen users' training comparisons thinned to uneven
                counts (a few users keep all 60, most keep 5-20; mean 20), as real
                data sets have: the users' Newton solve takes its row layout

(b), (c), (f) and (g) need ../shared/data (the hh-rlhf file) and MiniLM; they are skipped with a
message when absent. The first run embeds 4,606 texts (about 6 minutes on 2 cores) into
runs/bench-cache/.

    python bench/accuracy.py [--populations demo,small-text,large-text,high-d] [--seeds 0,1,2]
                             [--out F.json]

Every row is the mean over the seeds (each seed draws a new population and split); the
hindsight-best row is the grid cell with the best MEAN unseen accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from lore_rm import LowRankReward, PopulationConfig, four_numbers, simulate_population

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_populations  # noqa: E402

PLANTED = {
    "demo": {},
    "high-d": {"d": 512, "n_seen": 100, "train_per_user": 40, "n_prompts": 2000},
    "prism": {
        "d": 4096,
        "true_rank": 4,
        "n_seen": 1000,
        "n_unseen": 200,
        "train_per_user": 15,
        "test_per_user": 10,
        "fewshot_per_user": 10,
        "n_prompts": 4000,
    },
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
GRID_RANKS = (1, 2, 3, 4, 6)
GRID_DECAYS = (0.001, 0.01, 0.1, 0.3, 1.0, 3.0)
#: the PersonalLLM-sized problem takes minutes per fit on a CPU: a smaller hindsight grid
PERSONAL_GRID = ((1, 2, 4, 6), (0.01, 0.1, 1.0))
KEYS = ("train", "seen_test", "fewshot_train", "unseen_test")


def population(name: str, seed: int):
    if name in PLANTED:
        pop = simulate_population(PopulationConfig(seed=seed, **PLANTED[name]))
        return pop.split, pop.oracle
    build = {
        "small-text": text_populations.small_real_text,
        "large-text": text_populations.large_real_text,
        "shared-text": text_populations.shared_real_text,
        "mostly-shared": text_populations.mostly_shared_real_text,
    }
    if name == "uneven-text":
        pop = text_populations.large_real_text(seed)
        return replace(pop.split, seen_train=uneven_counts(pop.split.seen_train, seed)), pop.oracle
    pop = build[name](seed)
    return pop.split, pop.oracle


def uneven_counts(data, seed: int, least: int = 5):
    """``data`` with user i keeping ``max(least, round(C_i * r_i**2))`` of their C_i
    comparisons (the first ones; r_i uniform, seeded): skewed counts, as real users have."""
    g = torch.Generator().manual_seed(seed + 7)
    u = data.user_index
    counts = torch.bincount(u, minlength=data.n_users)
    keep = (counts * torch.rand(data.n_users, generator=g) ** 2).round().clamp_min(least)
    order = torch.argsort(u, stable=True)
    first = torch.cumsum(counts, 0) - counts
    place = torch.empty_like(u)
    place[order] = torch.arange(u.numel()) - first[u[order]]  # a row's place in its user's
    return data.subset(place < keep[u])


def run(split, seed: int, **kw) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = LowRankReward(seed=seed, **kw).fit(split.seen_train, split.reference_head)
    row = {k: four_numbers(model, split)[k] for k in KEYS}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["rank"] = model.rank_
    row["weight_decay"] = model.config_.weight_decay
    row["personalization"] = model.personalization_
    row["weights"] = model.weight_space_
    row["warnings"] = sorted({type(w.message).__name__ for w in caught})
    sel = model.history_.get("selection")
    if sel:
        row["search_fits"] = sel["n_fits"]
    return row


def mean_rows(rows: list[dict]) -> dict:
    """The mean of each number over seeds (and the unseen accuracy's spread over seeds)."""
    out = {key: sum(r[key] for r in rows) / len(rows) for key in (*KEYS, "seconds")}
    unseen = torch.tensor([r["unseen_test"] for r in rows], dtype=torch.float64)
    out["unseen_test_seed_std"] = float(unseen.std()) if len(rows) > 1 else 0.0
    for key in ("rank", "weight_decay", "personalization", "weights", "search_fits", "warnings"):
        if key in rows[0]:
            out[key] = [r[key] for r in rows]
    return out


def evaluate_population(
    name: str, seeds: list[int], settings: dict | None = None, grid_too: bool = True
) -> dict:
    """Every row of the table for one population, averaged over ``seeds``; ``settings``
    override the default row's fit settings; ``grid_too=False`` fits the default only."""
    ranks, decays = PERSONAL_GRID if name in ("personal", "prism") else (GRID_RANKS, GRID_DECAYS)
    if not grid_too:
        ranks, decays = (), ()
    per_seed: dict[str, list[dict]] = {}
    grid: dict[tuple[int, float], list[dict]] = {}
    oracles = []
    for seed in seeds:
        split, oracle = population(name, seed)
        per_seed.setdefault("default", []).append(
            run(split, seed, **{"rank": "auto", **(settings or {})})
        )
        if not grid_too:
            continue
        per_seed.setdefault("pooled rank 1", []).append(run(split, seed, rank=1))
        per_seed.setdefault("paper recipe, rank 4", []).append(
            run(split, seed, rank=4, recipe="paper")
        )
        for k in ranks:
            for w in decays:
                grid.setdefault((k, w), []).append(run(split, seed, rank=k, weight_decay=w))
        if oracle:
            oracles.append(oracle)
    rows = {label: mean_rows(r) for label, r in per_seed.items()}
    if not grid_too:
        return {"seeds": seeds, "rows": rows, "settings": settings or {}}
    grid_mean = {kw: mean_rows(r) for kw, r in grid.items()}
    k, w = max(grid_mean, key=lambda kw: grid_mean[kw]["unseen_test"])
    rows[f"hindsight best: K={k} wd={w:g}"] = grid_mean[(k, w)]
    if oracles:
        rows["oracle"] = {key: sum(o[key] for o in oracles) / len(oracles) for key in KEYS}
    d, pooled = rows["default"], rows["pooled rank 1"]
    return {
        "seeds": seeds,
        "rows": rows,
        "grid": [{"rank": k, "weight_decay": w, **r} for (k, w), r in grid_mean.items()],
        "hindsight_best": {"rank": k, "weight_decay": w},
        "default_minus_hindsight_best": d["unseen_test"] - grid_mean[(k, w)]["unseen_test"],
        "default_minus_pooled": d["unseen_test"] - pooled["unseen_test"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--populations", default="demo,small-text,large-text,high-d,shared-text,mostly-shared"
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; every row is their mean")
    p.add_argument("--out", type=Path, default=Path("runs/accuracy.json"))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a fit setting of the default row (JSON value), e.g. --set cv_exclude_pairs=false",
    )
    p.add_argument("--default-only", action="store_true", help="fit the default row only")
    args = p.parse_args()
    settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {
        "seeds": seeds,
        "torch_threads": torch.get_num_threads(),
        "settings": settings,
    }
    fmt = "{:13s} {:30s} {:>6s} {:>6s} {:>6s} {:>6s} {:>6s} {:>7s}"
    print(f"mean over seeds {seeds}; 'sd' is the unseen accuracy's spread over seeds")
    print(fmt.format("population", "row", "train", "seen", "fs-tr", "unseen", "sd", "sec"))
    for name in args.populations.split(","):
        try:
            result = evaluate_population(name, seeds, settings, not args.default_only)
        except text_populations.DataUnavailable as exc:
            print(f"{name:13s} skipped: {exc}")
            continue
        for label, r in result["rows"].items():
            numbers = [f"{r[key]:.3f}" for key in KEYS]
            sd = f"{r['unseen_test_seed_std']:.3f}" if "unseen_test_seed_std" in r else ""
            print(fmt.format(name, label, *numbers, sd, f"{r.get('seconds', 0):.1f}"))
        d = result["rows"]["default"]
        results[name] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
        chose = ", ".join(
            f"K={k} wd={w:g} lam={lam:g}{' signed' if sp == 'signed' else ''}"
            for k, w, lam, sp in zip(
                d["rank"], d["weight_decay"], d["personalization"], d["weights"], strict=True
            )
        )
        line = f"{'':13s} default chose {chose} ({d['search_fits']} search fits)"
        if "default_minus_hindsight_best" in result:
            line += (
                f"; unseen - hindsight best = {result['default_minus_hindsight_best']:+.3f}; "
                f"unseen - pooled = {result['default_minus_pooled']:+.3f}"
            )
        print(line, flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
