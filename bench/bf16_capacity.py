"""The largest problem that loads and fits with the embedding table stored in bfloat16.

For each size (texts at d = 4096), a fresh child process builds a planted problem directly in
bf16, block by block (never a float32 copy of the table): random embeddings, a true rank-3
basis, 500 users with Dirichlet weights, one comparison per pair of texts (every text is used
once, so the fit's compaction keeps the table as it is), labels drawn from the Bradley-Terry
model. It then runs ``Comparisons.from_pairs`` and ``LowRankReward(rank=5,
weight_decay=0.1, n_iter=...).fit`` and reports the time and the peak resident memory
(VmHWM). Sizes run in increasing order and stop at the first whose estimated peak (table
bytes + 1.5 GiB) passes --max-gib, or that fails.

    python bench/bf16_capacity.py --texts 250000 1000000 1250000 --n-iter 20 --max-gib 12

Measured (load average 2.7-5.3 from another session; docs/measurements.md, "Scale"): 250k texts
peak RSS 2.67 GiB (table 1.91), 1M texts 8.46 GiB (table 7.63; fit 465 s), 1.25M texts
10.33 GiB (table 9.54; fit 279 s). A float32 copy of the 1M table alone would be 15.3 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

D = 4096
USERS = 500
TRUE_RANK = 3
BLOCK = 16384


def vm(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(texts: int, n_iter: int) -> dict:
    import torch

    from lore_rm import Comparisons, LowRankReward
    from lore_rm.table_passes import table_times
    from lore_rm.threads import pin_threads

    torch.set_num_threads(1)
    pin_threads(1)  # the fit's threads='auto' keeps it
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    table = torch.empty(texts, D, dtype=torch.bfloat16)
    for start in range(0, texts, BLOCK):
        rows = min(BLOCK, texts - start)
        table[start : start + rows] = torch.randn(rows, D, generator=gen)
    basis = torch.randn(TRUE_RANK, D, generator=gen) / D**0.5
    utility = table_times(table, basis)  # (T, 3) float32, one blocked pass
    pairs = texts // 2
    perm = torch.randperm(texts, generator=gen)
    c, r = perm[:pairs], perm[pairs:]
    users = torch.arange(pairs) % USERS
    w = torch.distributions.Dirichlet(torch.ones(TRUE_RANK)).sample((USERS,))
    margin = 5.0 * ((utility[c] - utility[r]) * w[users]).sum(1)
    flip = torch.rand(pairs, generator=gen) > torch.sigmoid(margin)
    c, r = torch.where(flip, r, c), torch.where(flip, c, r)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = Comparisons.from_pairs(table, c, r, users, user_ids=[f"u{i}" for i in range(USERS)])
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = LowRankReward(rank=5, weight_decay=0.1, n_iter=n_iter).fit(data)
    fit_s = time.perf_counter() - t0
    return {
        "texts": texts,
        "comparisons": pairs,
        "table_gib": table.numel() * 2 / 2**30,
        "build_s": build_s,
        "load_s": load_s,
        "fit_s": fit_s,
        "train_acc": model.score(data),
        "peak_gib": vm("VmHWM") / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    ap.add_argument("--max-gib", type=float, default=12.0)
    ap.add_argument("--n-iter", type=int, default=30)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n_iter)))
        return
    print(f"d = {D}, {USERS} users, rank 5, n_iter {args.n_iter}, 1 thread")
    for texts in sorted(args.texts):
        estimate = texts * D * 2 / 2**30 + 1.5
        if estimate > args.max_gib:
            print(f"{texts} texts: estimated peak {estimate:.1f} GiB > {args.max_gib} GiB, stop")
            break
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--child", str(texts), "--n-iter", str(args.n_iter)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{texts} texts: failed ({out.returncode}): {out.stderr.strip()[-500:]}")
            break
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{texts:>9} texts {r['comparisons']:>8} comparisons  table {r['table_gib']:.2f} GiB  "
            f"build {r['build_s']:.0f} s  from_pairs {r['load_s']:.1f} s  fit {r['fit_s']:.0f} s  "
            f"train acc {r['train_acc']:.3f}  peak RSS {r['peak_gib']:.2f} GiB  load {load:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
