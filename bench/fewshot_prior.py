"""The learned few-shot prior against the isotropic one, across shots per new user.

For each population: fit the default model (rank and ridge chosen by cross-validation) on
the seen users once; it learns the prior from them (``fewshot_prior='learned'``, the
default). Then new users are personalised on ``shots`` comparisons each drawn from their
few-shot pool, under the learned prior and under the isotropic prior of strength 0.3 (the
previous default), on the same draws; the table is unseen-user test accuracy (mean over
draws and seeds) and the difference.

    python bench/fewshot_prior.py [--populations demo,high-d,small-text,large-text]
                                  [--seeds 0,1] [--draws 3] [--rank auto|K]
                                  [--out runs/fewshot-prior.json]

The planted populations get 50 few-shot comparisons per new user; the real-text ones
(which need ../shared/data and MiniLM, see bench/accuracy.py) have 20.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from lore_rm import LowRankReward, PopulationConfig, simulate_population
from lore_rm.evaluate import sample_shots
from lore_rm.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_populations  # noqa: E402

SHOTS = (0, 1, 2, 3, 5, 10, 20, 50)
PLANTED = {
    "demo": {"fewshot_per_user": 50},
    "high-d": {
        "d": 512,
        "n_seen": 100,
        "train_per_user": 40,
        "n_prompts": 2000,
        "fewshot_per_user": 50,
    },
}
PRIORS = {"isotropic 0.3": 0.3, "learned": "learned"}


def population(name: str, seed: int):
    if name in PLANTED:
        return simulate_population(PopulationConfig(seed=seed, **PLANTED[name])).split
    build = {
        "small-text": text_populations.small_real_text,
        "large-text": text_populations.large_real_text,
    }
    return build[name](seed).split


def sweep(name: str, seed: int, draws: int, rank: int | str = "auto") -> dict:
    split = population(name, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(rank=rank, seed=seed).fit(split.seen_train, split.reference_head)
    fit_s = time.perf_counter() - t0
    pool = int(split.unseen_fewshot.counts_per_user().min())
    acc: dict[str, dict[int, list[float]]] = {p: {} for p in PRIORS}
    seconds = {p: 0.0 for p in PRIORS}
    for shots in [s for s in SHOTS if s <= pool]:
        for draw in range(draws):
            gen = torch.Generator().manual_seed(1000 * seed + draw)
            data = sample_shots(split.unseen_fewshot, shots, gen)
            for label, prior in PRIORS.items():
                m = model.copy()
                m.settings = {**m.settings, "fewshot_prior": prior}
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # 0 shots: "users have no comparisons"
                    m.personalize(data, users=split.unseen_fewshot.user_ids)
                seconds[label] += time.perf_counter() - t
                acc[label].setdefault(shots, []).append(m.score(split.unseen_test))
    return {
        "rank": model.n_components_,
        "fit_seconds": round(fit_s, 2),
        "prior": model.history_.get("prior"),
        "accuracy": {p: {s: sum(v) / len(v) for s, v in a.items()} for p, a in acc.items()},
        "personalize_seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--populations", default="demo,high-d,small-text,large-text")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--rank", default="auto", help="'auto' (the default fit) or a fixed rank")
    p.add_argument("--out", default="runs/fewshot-prior.json")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict = {"seeds": seeds, "draws": args.draws, "populations": {}}
    for name in args.populations.split(","):
        try:
            rank = args.rank if args.rank == "auto" else int(args.rank)
            runs = [sweep(name, seed, args.draws, rank) for seed in seeds]
        except text_populations.DataUnavailable as exc:
            print(f"{name}: skipped: {exc}")
            continue
        shots = sorted(runs[0]["accuracy"]["learned"])
        table = {
            label: {s: sum(r["accuracy"][label][s] for r in runs) / len(runs) for s in shots}
            for label in PRIORS
        }
        report["populations"][name] = {"runs": runs, "mean": table}
        ranks = ", ".join(str(r["rank"]) for r in runs)
        print(f"\n{name} (K = {ranks}; unseen-user test accuracy, mean over seeds and draws)")
        print("shots          " + "".join(f"{s:>8d}" for s in shots))
        for label in PRIORS:
            print(f"{label:15s}" + "".join(f"{table[label][s]:8.4f}" for s in shots))
        diff = [table["learned"][s] - table["isotropic 0.3"][s] for s in shots]
        print(f"{'learned - iso':15s}" + "".join(f"{v:+8.4f}" for v in diff))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), report)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
