"""Speed of lore-rm's vectorised fits against a faithful naive version of the published loops.

Joint fit: U seen users x C comparisons, d, K, 1000 iterations of the published recipe
(alternating Adam), lore-rm's vectorised implementation vs the naive one that computes every
user's reward for every comparison. The naive loop is timed over --naive-iters iterations and
its per-iteration time compared (it is the same algorithm; see
tests/test_core_fit.py::test_paper_recipe_matches_the_naive_published_loop).
The floor is one X @ V plus one X.T @ G per iteration on the same data.

End to end: the published loop's whole fit (its per-iteration time times --iters) against
lore-rm's default fit at the same rank, its ridge search and refit included.

Few-shot: N new users, the published Adam fit (500 iterations each), vectorised over all users
vs a Python loop over users; and lore-rm's default (batched L-BFGS MAP fit).

    python bench/fit_speed.py            # the issue's setting
    python bench/fit_speed.py --quick    # a smaller one
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # naive_published
from naive_published import naive_fewshot, naive_joint_fit  # noqa: E402

from lore_rm import Comparisons, LowRankReward  # noqa: E402
from lore_rm.fit import fit_user_weights  # noqa: E402
from lore_rm.fit.config import FitConfig  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def joint_row(users: int, per_user: int, d: int, k: int, iters: int, naive_iters: int) -> dict:
    g = torch.Generator().manual_seed(0)
    n = users * per_user
    x = torch.randn(n, d, generator=g)
    index = torch.arange(users).repeat_interleave(per_user)
    data = Comparisons.from_features(x, index, user_ids=[f"u{i}" for i in range(users)])
    model = LowRankReward(rank=k, recipe="paper", n_iter=iters, prune_threshold=None)
    t_ours = timed(lambda: model.fit(data))
    t_naive = timed(lambda: naive_joint_fit(x, index, users, k, n_iter=naive_iters))
    v, gmat = torch.randn(d, k), torch.randn(n, k)

    def floor_step():
        for _ in range(naive_iters):
            data.project(v)
            data.backproject(gmat)

    per_floor = timed(floor_step, repeat=3) / naive_iters
    t_default = timed(lambda: LowRankReward(rank=k).fit(data))
    return {
        "users": users,
        "per_user": per_user,
        "ours": t_ours / iters,
        "naive": t_naive / naive_iters,
        "floor": per_floor,
        "default_total": t_default,
        "model": model,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--per-user", type=int, default=50)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--rank", type=int, default=5)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--naive-iters", type=int, default=50)
    p.add_argument("--new-users", type=int, default=50)
    p.add_argument("--shots", type=int, default=20)
    p.add_argument(
        "--more-users",
        type=int,
        default=1000,
        help="a second joint-fit row with this many users and the same N (0 = skip)",
    )
    p.add_argument("--quick", action="store_true", help="d=256, 200 iterations, 10 new users")
    args = p.parse_args()
    if args.quick:
        args.d, args.iters, args.naive_iters, args.new_users = 256, 200, 20, 10
    k = args.rank
    n = args.users * args.per_user
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; d = {args.d}, K = {k}; "
        f"published recipe (alternating Adam), {args.iters} iterations; the naive loop is "
        f"timed over {args.naive_iters} iterations and compared per iteration"
    )
    settings = [(args.users, args.per_user)]
    if args.more_users and args.more_users != args.users:
        settings.append((args.more_users, max(1, n // args.more_users)))
    print(
        f"\n{'users':>6} {'x cmp':>6} {'lore-rm ms/it':>14} {'naive ms/it':>12} "
        f"{'speed-up':>9} {'floor ms/it':>12} {'lore-rm/floor':>14} {'default fit s':>14}"
    )
    rows = []
    for users, per_user in settings:
        r = joint_row(
            users, per_user, args.d, k, args.iters, max(5, args.naive_iters * args.users // users)
        )
        rows.append(r)
        print(
            f"{users:>6} {per_user:>6} {r['ours'] * 1e3:>14.2f} {r['naive'] * 1e3:>12.2f} "
            f"{r['naive'] / r['ours']:>8.1f}x {r['floor'] * 1e3:>12.2f} "
            f"{r['ours'] / r['floor']:>13.2f}x {r['default_total']:>14.2f}"
        )
    print("floor = one X @ V plus one (G.T @ X).T on the same data, per iteration")
    for (users, per_user), r in zip(settings, rows, strict=True):
        naive_total = r["naive"] * args.iters
        print(
            f"end to end, {users} x {per_user}: the published loop's {args.iters} iterations "
            f"(naive, per-iteration time x {args.iters}) {naive_total:.1f} s against lore-rm's "
            f"default fit (rank {k}, ridge searched by cross-validation, refit) "
            f"{r['default_total']:.2f} s: {naive_total / r['default_total']:.0f}x"
        )

    # --- few-shot --------------------------------------------------------------------------
    g = torch.Generator().manual_seed(1)
    m = args.new_users * args.shots
    xf = torch.randn(m, args.d, generator=g)
    uf = torch.arange(args.new_users).repeat_interleave(args.shots)
    few = Comparisons.from_features(xf, uf, user_ids=[f"n{i}" for i in range(args.new_users)])
    basis = rows[0]["model"].basis_
    pop = torch.full((k,), 1.0 / k)
    paper = FitConfig.for_recipe("paper")
    default = FitConfig.for_recipe("default")
    t_vec = timed(lambda: fit_user_weights(few, basis, 0.01, paper, pop), repeat=3)
    t_loop = timed(lambda: naive_fewshot(xf, uf, args.new_users, basis, n_iter=500, lr=0.1))
    t_map = timed(lambda: fit_user_weights(few, basis, 0.01, default, pop), repeat=3)
    print(f"\nfew-shot: {args.new_users} new users x {args.shots} comparisons, K = {k}")
    print(f"  published Adam, vectorised : {t_vec:8.3f} s")
    print(f"  published Adam, user loop  : {t_loop:8.3f} s")
    print(f"  speed-up                   : {t_loop / t_vec:8.1f}x")
    print(
        f"  lore-rm default (L-BFGS MAP, all users at once): {t_map:.3f} s "
        f"({t_loop / t_map:.1f}x faster than the loop)"
    )


if __name__ == "__main__":
    main()
