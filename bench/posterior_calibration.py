"""Calibration of new users' predicted probabilities and reward-margin intervals.

Fit the default recipe on the seen users (rank 4 unless ``--rank``; the ridge by
cross-validation, which also learns the model's ``margin_scale``, see
``lore_rm.fit.calibration``), personalise the new users on ``shots`` comparisons each, then
score the new users' held-out comparisons, each with the learned scale ("calibrated") and
with the scale set to 1 ("raw", the fit's own margins; the weights are the same):

* the expected calibration error (ECE, 15 bins) of ``predict_proba`` plain and integrated
  over the Laplace posterior (probit approximation);
* on planted populations, which know the TRUE margins: the coverage of the 90% intervals
  (mean +- 1.645 std under the posterior) and the slope of the true margins on the predicted
  ones (least squares through 0; above 1, the predicted margins are too small).

Last, the time of one ``weights_posterior`` call for 100,000 users (10 comparisons each).

    python bench/posterior_calibration.py [--population demo] [--seed 0] [--rank 4]
        [--shots 2 5 20] [--weight-decay auto] [--speed-users 100000] [--set FIELD=VALUE ...]

``--population`` is one of the accuracy suite's (``demo``, ``high-d``, ``personal``: planted;
``small-text``, ``large-text``: real hh-rlhf text, labels only, no true margins; they need
``../shared/data``). ``--set`` changes fields of a planted population (``PopulationConfig``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lore_rm import Comparisons, LowRankReward, PopulationConfig, simulate_population
from lore_rm.evaluate import sample_shots
from lore_rm.fit.solvers import bt_margins
from lore_rm.metrics import expected_calibration_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import PLANTED  # noqa: E402
from accuracy import population as text_population  # noqa: E402


def calibration(
    model: LowRankReward, fewshot, test, shots: int, seed: int = 0, true_margins=None
) -> dict:
    """ECE and accuracy of new users' test predictions after ``shots`` comparisons each, and
    the coverage of the true margins by the 90% intervals, at the model's margin scale."""
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


def raw(model: LowRankReward) -> LowRankReward:
    """The same model with its margin scale set to 1 (the fit's own margins)."""
    out = model.copy()
    out.margin_scale_ = 1.0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--population",
        default="demo",
        choices=["demo", "high-d", "personal", "small-text", "large-text"],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", default="4", help="an integer, or 'auto'")
    p.add_argument("--shots", type=int, nargs="+", default=[2, 5, 20])
    p.add_argument("--weight-decay", default="auto", help="the basis ridge ('auto': by CV)")
    p.add_argument("--speed-users", type=int, default=100_000)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = p.parse_args()
    fields = {k: float(v) if "." in v or "e" in v else int(v) for k, v in _pairs(args.set)}
    truth = None
    if args.population in PLANTED:
        config = {**PLANTED[args.population], **fields}
        pop = simulate_population(PopulationConfig(seed=args.seed, **config))
        split = pop.split
    else:
        if fields:
            raise SystemExit("--set changes planted populations only")
        split, _ = text_population(args.population, args.seed)
    wd = args.weight_decay if args.weight_decay == "auto" else float(args.weight_decay)
    rank = args.rank if args.rank == "auto" else int(args.rank)
    t0 = time.perf_counter()
    model = LowRankReward(rank=rank, weight_decay=wd, seed=args.seed).fit(
        split.seen_train, split.reference_head
    )
    fit_seconds = time.perf_counter() - t0
    test = split.unseen_test
    if args.population in PLANTED:
        truth = bt_margins(
            test.project(pop.true_basis), pop.true_weights["unseen"], test.user_index, 1.0
        ).double()
    cal = model.history_["calibration"]
    print(
        f"{args.population} seed {args.seed}: rank {model.rank_}, weight_decay "
        f"{model.config_.weight_decay:g}, margin_scale {model.margin_scale_:g} "
        f"({cal.get('source') or cal.get('why')}); fit {fit_seconds:.1f} s"
    )
    print(
        "shots  ECE plain (calibrated / raw)  ECE posterior (calibrated / raw)  "
        "90% coverage (calibrated / raw)  slope (calibrated / raw)  accuracy"
    )
    for shots in args.shots:
        a = calibration(model, split.unseen_fewshot, test, shots, args.seed, truth)
        b = calibration(raw(model), split.unseen_fewshot, test, shots, args.seed, truth)
        print(
            f"{shots:5d}  {a['ece_plain']:10.4f} / {b['ece_plain']:.4f}  "
            f"{a['ece_posterior']:20.4f} / {b['ece_posterior']:.4f}  "
            f"{a['coverage_90']:18.3f} / {b['coverage_90']:.3f}  "
            f"{a['slope']:12.2f} / {b['slope']:.2f}  {a['accuracy']:8.4f}"
        )
    if args.speed_users:
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
