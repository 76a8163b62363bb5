"""Speed of lore-rm's vectorised fits against a faithful naive version of the published loops.

Joint fit: U seen users x C comparisons, d, K, 1000 iterations of the published recipe
(alternating Adam), lore-rm's vectorised implementation vs the naive one that computes every
user's reward for every comparison. The naive loop is timed over --naive-iters iterations and
its per-iteration time compared (it is the same algorithm; see
tests/test_core_fit.py::test_paper_recipe_matches_the_naive_published_loop).
The floor is one X @ V plus one X.T @ G per iteration on the same data.

End to end: the naive loop's whole fit (its per-iteration time times --iters) against
lore-rm's default fit at the same rank, its ridge search and refit included. The naive loop
scores every user on every row (as the published packed ``LoRe_regularized`` does); the
published ``solve_regularized`` that its scripts call loops over users and was 3.7x faster
per step at 100 users x 50 comparisons, d = 1024 (docs/measurements.md): --published times it.

Few-shot: N new users, the published Adam fit (500 iterations each), vectorised over all users
vs a Python loop over users; and lore-rm's default (batched Newton MAP fit).

Against the published code itself (--published: a checkout of facebookresearch/LoRe, or its
utils.py): on a planted population (U users x C comparisons, d, true rank K) its joint fit
``solve_regularized`` (alpha 0, 1000 Adam steps at lr 0.5, as its ``run`` calls it) against
lore-rm's default fit, the search included (``rank=K`` with the ridge searched, and the whole
default ``rank="auto"``), with the seen users' test accuracy of each. Selection included on
both sides: the published code chooses a rank by fitting every rank of a list (its scripts'
``run`` loops over ``K_list``) and reading the test accuracies; --published also times that
sweep over rank='auto''s grid (--sweep-ranks), one ``solve_regularized`` per rank, and names
the rank its test rows favour. lore-rm's choice is cross-validated on the training rows only,
so the sweep is the cheaper of the two workflows. The published module is imported from that
path; nothing of it is copied here.

    python bench/fit_speed.py            # the issue's setting
    python bench/fit_speed.py --quick    # a smaller one
    python bench/fit_speed.py --published ../LoRe --more-users 0
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # naive_published
from naive_published import naive_fewshot, naive_joint_fit  # noqa: E402

from lore_rm import Comparisons, LowRankReward, four_numbers, simulate_population  # noqa: E402
from lore_rm.fit import fit_user_weights  # noqa: E402
from lore_rm.fit.config import FitConfig  # noqa: E402
from lore_rm.metrics import mean_accuracy  # noqa: E402


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


def load_published(path: Path):
    """The published ``utils`` module, imported from a checkout (or the file itself)."""
    file = path / "utils.py" if path.is_dir() else path
    if not file.is_file():
        raise SystemExit(f"--published: no utils.py at {file}")
    spec = importlib.util.spec_from_file_location("lore_published_utils", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def published_row(
    path: Path, users: int, per_user: int, d: int, k: int, iters: int, sweep_ranks: list[int]
) -> None:
    """The published joint fit against lore-rm's default fit, end to end, planted data."""
    published = load_published(path)
    pop = simulate_population(
        d=d, true_rank=k, n_seen=users, n_unseen=20, train_per_user=per_user, seed=0
    )
    split = pop.split
    train = split.seen_train
    x = train.project(torch.eye(d))  # every comparison's feature difference (N, d)
    per_user_rows = [x[train.user_index == u] for u in range(train.n_users)]
    test = split.seen_test

    def published_fit(rank: int) -> tuple[float, float]:
        """One published joint fit at ``rank``: its seconds and its seen users' test accuracy."""
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its weights' statistics
            w_pub, v_pub = published.solve_regularized(
                torch.zeros(d), 0.0, per_user_rows, rank, num_iterations=iters, learning_rate=0.5
            )
        seconds = time.perf_counter() - t0
        margins = (test.project(v_pub.detach()) * w_pub.detach()[test.user_index]).sum(-1)
        return seconds, mean_accuracy(margins, test.user_index, test.n_users)[0]

    t_pub, acc_pub = published_fit(k)
    print(
        f"\nagainst the published code ({path}): planted, {users} users x {per_user} "
        f"comparisons, d = {d}, true rank {k}; one process, cold"
    )
    print(
        f"  published solve_regularized, {iters} Adam steps: {t_pub:8.2f} s, "
        f"seen test {acc_pub:.3f}"
    )
    sweep = {rank: published_fit(rank) for rank in sweep_ranks}
    t_sweep = sum(t for t, _ in sweep.values())
    best = max(sweep, key=lambda rank: sweep[rank][1])
    print(
        f"  published rank sweep, one solve_regularized per rank of {list(sweep_ranks)} (its "
        f"scripts' run() loops over K_list): {t_sweep:8.2f} s; the best on the test rows "
        f"(its scripts read the rank off the test curve) rank {best}, seen test "
        f"{sweep[best][1]:.3f}"
    )
    print("    " + ", ".join(f"K={r} {t:.2f} s {a:.3f}" for r, (t, a) in sweep.items()))
    for label, kw in ((f"rank {k}, ridge searched", {"rank": k}), ('rank="auto"', {})):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LowRankReward(**kw).fit(train)
        t = time.perf_counter() - t0
        acc = four_numbers(model, split)["seen_test"]
        print(
            f"  lore-rm default, {label:<24}: {t:8.2f} s, seen test {acc:.3f} "
            f"(rank {model.rank_}): {t_pub / t:.0f}x one published fit"
            + ("" if kw else f", {t_sweep / t:.0f}x the published rank sweep")
        )


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
    p.add_argument(
        "--sweep-ranks",
        type=int,
        nargs="+",
        help="with --published: the ranks of its rank sweep (default: rank='auto''s grid)",
    )
    p.add_argument("--quick", action="store_true", help="d=256, 200 iterations, 10 new users")
    p.add_argument(
        "--published",
        type=Path,
        help="a checkout of facebookresearch/LoRe (or its utils.py): time its own joint fit too",
    )
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
            f"end to end, {users} x {per_user}: the naive loop's {args.iters} iterations "
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
        f"  lore-rm default (Newton MAP, all users at once): {t_map:.3f} s "
        f"({t_loop / t_map:.1f}x faster than the loop)"
    )
    if args.published is not None:
        sweep = args.sweep_ranks or [r for r in FitConfig().rank_grid if r <= args.d]
        published_row(args.published, args.users, args.per_user, args.d, k, args.iters, sweep)


if __name__ == "__main__":
    main()
