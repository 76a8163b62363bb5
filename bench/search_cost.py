"""What the cross-validated search costs, against one fit of the cell it chooses.

For every population of the accuracy suite (``bench/accuracy.py``) and seed: the default fit
(``rank="auto"``, ridge, weight space and personalisation strength searched) is timed, then
one fit of the cell it chose (``rank=K, weight_decay=w, weights=..., personalization=...``:
no search) on the same data. The ratio ``default / chosen cell`` is what the search costs in
units of the fit it chose. Each of the two times is the median of ``--repeats`` fits in the
same process (a single fit of the chosen cell takes 0.1-1 s, so one timing is noisy;
``search_seconds`` in the JSON is the last default fit's own). The one-minute load average is
printed beside every timing (the machine may be shared): compare ratios, which are measured
side by side.

    python bench/search_cost.py [--populations demo,small-text,...] [--seeds 0,1,2]
                                [--repeats 3] [--threads 1] [--out runs/search_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from lore_rm import LowRankReward, four_numbers
from lore_rm.threads import pin_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_populations  # noqa: E402
from accuracy import population  # noqa: E402

SUITE = "demo,small-text,large-text,high-d,shared-text,mostly-shared"


def timed_fit(split, seed: int, **kw) -> tuple[LowRankReward, float, float]:
    """The fitted model, its wall time and the load average when it ended."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(seed=seed, **kw).fit(split.seen_train, split.reference_head)
    return model, time.perf_counter() - t0, os.getloadavg()[0]


def median_fit(split, seed: int, repeats: int, **kw) -> tuple[LowRankReward, float, float]:
    """:func:`timed_fit` ``repeats`` times: the last model, the median time, the last load."""
    runs = [timed_fit(split, seed, **kw) for _ in range(repeats)]
    return runs[-1][0], statistics.median(r[1] for r in runs), runs[-1][2]


def measure(name: str, seed: int, repeats: int = 1) -> dict:
    split, _ = population(name, seed)
    auto, t_auto, load_auto = median_fit(split, seed, repeats)
    sel = auto.history_["selection"]
    cell = {
        "rank": auto.rank_,
        "weight_decay": auto.config_.weight_decay,
        "weights": auto.weight_space_,
        "personalization": auto.personalization_,
    }
    one, t_one, load_one = median_fit(split, seed, repeats, **cell)
    return {
        "population": name,
        "seed": seed,
        "fits": sel["n_fits"],
        "search_seconds": sel["seconds"],
        "auto_seconds": round(t_auto, 2),
        "cell_seconds": round(t_one, 2),
        "ratio": round(t_auto / t_one, 2),
        "load": [round(load_auto, 1), round(load_one, 1)],
        "cell": cell,
        "unseen": four_numbers(auto, split)["unseen_test"],
        "cell_unseen": four_numbers(one, split)["unseen_test"],
        "cells_scored": len(sel["rows"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--populations", default=SUITE)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--repeats", type=int, default=3, help="fits per timing; the median is shown (default 3)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/search_cost.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pin_threads(args.threads)  # the fits' threads='auto' keeps it
    rows: list[dict] = []
    fmt = "{:13s} {:>4s} {:>5s} {:>8s} {:>8s} {:>7s} {:>6s} {:>11s} {:28s} {:>7s}"
    print(
        f"torch threads {args.threads}; times are medians of {args.repeats} fits; load = "
        "one-minute load average after the last of each"
    )
    print(
        fmt.format(
            "population",
            "seed",
            "fits",
            "auto s",
            "cell s",
            "ratio",
            "cells",
            "load",
            "chosen",
            "unseen",
        )
    )
    for name in args.populations.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            try:
                r = measure(name, seed, args.repeats)
            except text_populations.DataUnavailable as exc:
                print(f"{name:13s} skipped: {exc}")
                break
            rows.append(r)
            c = r["cell"]
            chosen = (
                f"K={c['rank']} wd={c['weight_decay']:g} lam={c['personalization']:g} "
                f"{c['weights']}"
            )
            print(
                fmt.format(
                    name,
                    str(seed),
                    str(r["fits"]),
                    f"{r['auto_seconds']:.1f}",
                    f"{r['cell_seconds']:.1f}",
                    f"{r['ratio']:.1f}",
                    str(r["cells_scored"]),
                    "/".join(f"{x:.1f}" for x in r["load"]),
                    chosen,
                    f"{r['unseen']:.4f}",
                ),
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
