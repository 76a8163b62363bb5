"""Calibration of new users' predicted probabilities with and without the Laplace posterior.

On a planted population (``simulate_population``, the `lore demo` one by default): fit the
default recipe on the seen users, personalise the new users on ``shots`` comparisons each,
then score the held-out comparisons of the new users by the expected calibration error (ECE)
of ``predict_proba`` plain and integrated over the posterior (probit approximation), and the
coverage of the 90% intervals of the reward margin (mean +- 1.645 std under the posterior)
of the TRUE margin, which the planted population knows. Last, the time of one
``weights_posterior`` call for 100,000 users (10 comparisons each).

    python bench/posterior_calibration.py [--seed 0] [--rank 4] [--shots 2 5 20]
                                          [--weight-decay auto] [--speed-users 100000]
                                          [--set d=512 n_seen=100 ...]

``--set`` changes fields of the planted population (``PopulationConfig``); e.g. the accuracy
suite's high-d population is ``--set d=512 n_seen=100 train_per_user=40 n_prompts=2000``.

Besides the coverage, each row prints the slope of the true margins on the predicted ones
(least squares through 0): above 1, the fitted margins are shrunk.
"""

from __future__ import annotations

import argparse
import time

import torch

from lore_rm import Comparisons, LowRankReward, simulate_population
from lore_rm.evaluate import sample_shots
from lore_rm.fit.solvers import bt_margins
from lore_rm.metrics import expected_calibration_error


def calibration(
    model: LowRankReward, fewshot, test, shots: int, seed: int = 0, true_margins=None
) -> dict:
    """ECE and accuracy of new users' test predictions after ``shots`` comparisons each, and
    the coverage of the true margins by the 90% intervals."""
    data = sample_shots(fewshot, shots, torch.Generator().manual_seed(seed))
    m = model.copy().personalize(data)
    post = m.weights_posterior(data)
    plain = m.predict_proba(test)
    bayes = m.predict_proba(test, posterior=post)
    coverage = slope = float("nan")
    if true_margins is not None:
        mean, std = m.margin_std(test, post)
        inside = (true_margins - mean.double()).abs() <= 1.645 * std.double()
        coverage = float(inside.double().mean())
        slope = float((mean.double() * true_margins).sum() / mean.double().pow(2).sum())
    return {
        "coverage_90": coverage,
        "slope": slope,
        "shots": shots,
        "ece_plain": expected_calibration_error(plain),
        "ece_posterior": expected_calibration_error(bayes),
        "accuracy": float((plain > 0.5).double().mean()),
        "mean_trace": float(post.covariance.diagonal(dim1=1, dim2=2).sum(-1).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--shots", type=int, nargs="+", default=[2, 5, 20])
    p.add_argument("--weight-decay", default="auto", help="the basis ridge ('auto': by CV)")
    p.add_argument("--speed-users", type=int, default=100_000)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = p.parse_args()
    fields = {k: float(v) if "." in v or "e" in v else int(v) for k, v in _pairs(args.set)}
    pop = simulate_population(seed=args.seed, **fields)
    split = pop.split
    wd = args.weight_decay if args.weight_decay == "auto" else float(args.weight_decay)
    model = LowRankReward(rank=args.rank, weight_decay=wd).fit(
        split.seen_train, split.reference_head
    )
    print(f"rank {args.rank}, weight_decay {model.config_.weight_decay:g}")
    test = split.unseen_test
    truth = bt_margins(
        test.project(pop.true_basis), pop.true_weights["unseen"], test.user_index, 1.0
    ).double()
    print("shots  ECE plain  ECE posterior  90% coverage  slope  accuracy  mean tr(Cov)")
    for shots in args.shots:
        r = calibration(model, split.unseen_fewshot, test, shots, args.seed, truth)
        print(
            f"{r['shots']:5d}  {r['ece_plain']:9.4f}  {r['ece_posterior']:13.4f}  "
            f"{r['coverage_90']:12.3f}  {r['slope']:5.2f}  {r['accuracy']:8.4f}  "
            f"{r['mean_trace']:12.3f}"
        )
    posterior_speed(model, args.speed_users)


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    bad = [i for i in items if "=" not in i]
    if bad:
        raise SystemExit(f"--set takes FIELD=VALUE, got {bad[0]!r}")
    return [tuple(i.split("=", 1)) for i in items]  # type: ignore[misc]


def posterior_speed(model: LowRankReward, n_users: int, per_user: int = 10) -> None:
    """Time ``weights_posterior`` for ``n_users`` users with ``per_user`` comparisons each
    (the weights are the population's; only the posterior is timed; median of 3)."""
    g = torch.Generator().manual_seed(0)
    ids = [f"u{i}" for i in range(n_users)]
    rows = torch.arange(n_users).repeat_interleave(per_user)
    x = torch.randn(len(rows), model.d_, generator=g)
    data = Comparisons.from_features(x, rows.numpy(), user_ids=ids)
    m = model.copy()
    m.set_user_weights(ids, model.population_weights_.expand(n_users, -1).clone())
    times = []
    for _ in range(3):
        t = time.perf_counter()
        m.weights_posterior(data)
        times.append(time.perf_counter() - t)
    print(
        f"weights_posterior for {n_users:,} users x {per_user} comparisons "
        f"(K = {m.n_components_}, d = {m.d_}): {sorted(times)[1]:.3f} s (median of 3, "
        f"{torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
