"""The users' Newton solve per step: the row layout against the padded one.

One evaluation of every (problem, user)'s loss and gradient plus their Hessians
(``NewtonPoint`` and ``NewtonPoint.hessian`` of ``lore_rm.fit.objective``), on random
projections of U users x C rows each, G problems (cross-validation folds) and K columns, in
both layouts of ``lore_rm.fit.user_layout``: the rows' own order (gather, ``index_add_``) and
padded user by user (broadcast, reductions, one batched product). Prints the median time of
each and the largest difference of their gradients and Hessians.

    python bench/users_solve.py [--shapes 200x60x5x4,200x60x5x6,1000x15x5x4] [--repeats 30]
"""

from __future__ import annotations

import argparse

import torch
from scale import median_time  # noqa: E402  (bench/ is the script's folder)

from lore_rm.fit.objective import NewtonPoint
from lore_rm.fit.user_layout import RowLayout, user_layout


def timed(fn, repeats: int) -> float:
    fn()  # warm up
    return median_time(fn, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="200x60x5x4,200x60x5x6,1000x15x5x4,100x50x5x2")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}; one evaluation plus Hessians, median of {args.repeats}")
    print(
        f"{'users':>6} {'rows':>5} {'G':>3} {'K':>3} {'rows ms':>9} {'padded ms':>10} "
        f"{'speed-up':>9} {'max |diff|':>11}"
    )
    for shape in args.shapes.split(","):
        n_users, per_user, g, k = (int(x) for x in shape.split("x"))
        gen = torch.Generator().manual_seed(0)
        u = torch.arange(n_users).repeat_interleave(per_user)
        u = u[torch.randperm(u.numel(), generator=gen)]
        z = torch.randn(u.numel(), g, k, generator=gen)
        coef = torch.rand(u.numel(), g, generator=gen) / u.numel()
        logits = 0.3 * torch.randn(g, n_users, k, generator=gen)
        eye = torch.eye(k, dtype=torch.float64)

        def penalty(lg, eye=eye, k=k):
            lg = lg.double()
            return 0.005 * (lg**2).sum(-1), 0.01 * lg, 0.01 * eye.expand(lg.shape[0], 1, k, k)

        results = {}
        for name, layout in (("rows", RowLayout(u, n_users)), ("padded", user_layout(u, n_users))):
            zl, cl = layout.rows(z), layout.rows(coef)

            def step(zl=zl, cl=cl, layout=layout, logits=logits, penalty=penalty):
                point = NewtonPoint(zl, logits, layout, cl, 1.0, penalty, True)
                return point.grad, point.hessian(cl, True)

            results[name] = (timed(step, args.repeats), step())
        (t_rows, (g0, h0)), (t_pad, (g1, h1)) = results["rows"], results["padded"]
        diff = max(float((g0 - g1).abs().max()), float((h0 - h1).abs().max()))
        print(
            f"{n_users:>6} {per_user:>5} {g:>3} {k:>3} {t_rows * 1e3:>9.2f} "
            f"{t_pad * 1e3:>10.2f} {t_rows / t_pad:>8.2f}x {diff:>11.1e}"
        )


if __name__ == "__main__":
    main()
