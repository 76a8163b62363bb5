"""How much personalisation pays, population by population: the personalisation report.

For every population and seed, each model (the default, and for the populations where users
mostly agree every fixed rank with the ridge chosen by cross-validation) is fitted on the
seen users and reported by :func:`lore_rm.evaluate.personalization.personalization_report`:
pooled (a rank-1 fit), shared (the basis at the population's mean weights) and personal
accuracy, for seen users on their held-out prompts and for new users after 5, 10 and 15
comparisons each (5 draws), with the per-user gain personal - shared and its 95% bootstrap
interval over users.

Populations (the real-text ones need ../shared/data and MiniLM, see bench/accuracy.py):
  demo          (a) planted, users genuinely differ (Dirichlet 0.3 mixes of 4 directions)
  small-text    (b) 60 users over hh-rlhf text with opposite preferences
  large-text    (c) 300 users mixing four conflicting tastes
  high-d        (d) planted, d = 512, 100 seen users x 40 comparisons
  personal      (e) planted, PersonalLLM-sized (d = 4096, 1000 + 500 users): only when named
  planted-agree     planted, users nearly identical (Dirichlet 100), 15 / 15 per user
  shared-text   (f) hh-rlhf text, everyone shares one taste (label noise only), 15 / 15
  mostly-shared (g) hh-rlhf text, 75% one shared taste + 25% each user's own, 15 / 15

The acceptance line of the personalisation issue is checked and printed: where users mostly
agree, personal >= max(shared, pooled) - 0.005 for seen users and for new users at every
shot count, for every model row.

    python bench/personalization.py [--populations demo,shared-text,...] [--seeds 0,1,2]
                                    [--ranks 2,3,4,5,6] [--out runs/personalization.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from lore_rm import LowRankReward, PopulationConfig, simulate_population
from lore_rm.evaluate.personalization import personalization_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_populations  # noqa: E402

PLANTED = {
    "demo": {},
    "high-d": {"d": 512, "n_seen": 100, "train_per_user": 40, "n_prompts": 2000},
    "personal": {  # (e), PersonalLLM-sized: minutes per fit on a CPU, only when asked for
        "d": 4096,
        "n_seen": 1000,
        "n_unseen": 500,
        "train_per_user": 47,
        "test_per_user": 40,
        "fewshot_per_user": 9,
        "n_prompts": 10402,
        "responses_per_prompt": 8,
    },
    "planted-agree": {
        "dirichlet_alpha": 100.0,
        "n_seen": 100,
        "n_unseen": 100,
        "train_per_user": 15,
        "test_per_user": 15,
        "fewshot_per_user": 15,
    },
}
TEXT = {
    "small-text": text_populations.small_real_text,
    "large-text": text_populations.large_real_text,
    "shared-text": text_populations.shared_real_text,
    "mostly-shared": text_populations.mostly_shared_real_text,
}
AGREE = ("planted-agree", "shared-text", "mostly-shared")
SHOTS = (5, 10, 15)
#: (e)'s new users have 9 few-shot comparisons each
SHOTS_OF = {"personal": (5, 9)}
TOLERANCE = 0.005


def population(name: str, seed: int):
    if name in PLANTED:
        return simulate_population(PopulationConfig(seed=seed, **PLANTED[name])).split
    return TEXT[name](seed).split


def report_row(split, seed: int, pooled: LowRankReward | None, shots, **kw) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(seed=seed, **kw).fit(split.seen_train, split.reference_head)
        seconds = time.perf_counter() - t0
        rep = personalization_report(model, split, pooled=pooled, shots=shots, seed=seed)
    return {
        "rank": model.rank_,
        "weights": model.weight_space_,
        "weight_decay": model.config_.weight_decay,
        "personalization": model.personalization_,
        "fit_seconds": round(seconds, 2),
        "summary": rep.summary,
        "groups": [
            {
                "label": g.label,
                "shots": g.shots,
                "accuracy": g.accuracy,
                "gain": g.gain,
            }
            for g in rep.groups
        ],
    }


def check(row: dict) -> list[str]:
    """Groups where personal falls more than TOLERANCE below max(shared, pooled)."""
    bad = []
    for g in row["groups"]:
        a = g["accuracy"]
        floor = max(a["shared"], a["pooled"]) - TOLERANCE
        if a["personal"] < floor:
            bad.append(f"{g['label']}: personal {a['personal']:.3f} < {floor + TOLERANCE:.3f}")
    return bad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--populations", default="demo,small-text,large-text,high-d," + ",".join(AGREE))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ranks", default="2,3,4,5,6", help="fixed ranks on the agreeing populations")
    p.add_argument("--weights", default="simplex", help="the default's weight space")
    p.add_argument("--out", type=Path, default=Path("runs/personalization.json"))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a fit setting of every model row (JSON value); e.g. the behaviour before "
        "personalisation was learned: --set hierarchical=false --set personalization=1 "
        "--set cv_exclude_pairs=false",
    )
    args = p.parse_args()
    settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    ranks = [int(k) for k in args.ranks.split(",") if k]
    results: dict = {
        "seeds": seeds,
        "torch_threads": torch.get_num_threads(),
        "settings": settings,
        "rows": [],
    }
    failures = []
    for name in args.populations.split(","):
        for seed in seeds:
            try:
                split = population(name, seed)
            except text_populations.DataUnavailable as exc:
                print(f"{name} skipped: {exc}")
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pooled = LowRankReward(rank=1, seed=seed).fit(
                    split.seen_train, split.reference_head
                )
            base = {"weights": args.weights, **settings}
            models = [("default", {"rank": "auto", **base})]
            if name in AGREE:
                models += [(f"rank {k}", {"rank": k, **base}) for k in ranks]
            for label, kw in models:
                row = report_row(split, seed, pooled, SHOTS_OF.get(name, SHOTS), **kw)
                row.update(population=name, seed=seed, model=label, problems=check(row))
                results["rows"].append(row)
                cells = " | ".join(
                    f"{g['label'].replace('new users, ', 'new@').replace(' comparisons', '')}: "
                    f"{g['accuracy']['pooled']:.3f}/{g['accuracy']['shared']:.3f}/"
                    f"{g['accuracy']['personal']:.3f} {g['gain']['mean']:+.3f}"
                    f"[{g['gain']['lower']:+.3f},{g['gain']['upper']:+.3f}]"
                    for g in row["groups"]
                )
                print(
                    f"{name} s{seed} {label} (K={row['rank']} wd={row['weight_decay']:g} "
                    f"lam={row['personalization']:g} {row['weights']}, {row['fit_seconds']:.0f}"
                    f" s) pooled/shared/personal gain: {cells}",
                    flush=True,
                )
                if name in AGREE and row["problems"]:
                    failures.append(f"{name} s{seed} {label}: " + "; ".join(row["problems"]))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print("\nwhere users mostly agree, personal >= max(shared, pooled) - 0.005:")
    print("  every row passes" if not failures else "\n".join(f"  FAIL {f}" for f in failures))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
