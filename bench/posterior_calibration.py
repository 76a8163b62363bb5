"""Calibration of new users' predicted probabilities with and without the Laplace posterior.

On a planted population (``simulate_population``, the `lore demo` one by default): fit the
default recipe on the seen users, personalise the new users on ``shots`` comparisons each,
then score the held-out comparisons of the new users by the expected calibration error (ECE)
of ``predict_proba`` plain and integrated over the posterior (probit approximation).

    python bench/posterior_calibration.py [--seed 0] [--rank 4] [--shots 2 5 20]
"""

from __future__ import annotations

import argparse

import torch

from lore_rm import LowRankReward, simulate_population
from lore_rm.evaluate import sample_shots
from lore_rm.metrics import expected_calibration_error


def calibration(model: LowRankReward, fewshot, test, shots: int, seed: int = 0) -> dict:
    """ECE and accuracy of new users' test predictions after ``shots`` comparisons each."""
    data = sample_shots(fewshot, shots, torch.Generator().manual_seed(seed))
    m = model.copy().personalize(data)
    post = m.weights_posterior(data)
    plain = m.predict_proba(test)
    bayes = m.predict_proba(test, posterior=post)
    return {
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
    args = p.parse_args()
    split = simulate_population(seed=args.seed).split
    model = LowRankReward(rank=args.rank).fit(split.seen_train, split.reference_head)
    print("shots  ECE plain  ECE posterior  accuracy  mean tr(Cov)")
    for shots in args.shots:
        r = calibration(model, split.unseen_fewshot, split.unseen_test, shots, args.seed)
        print(
            f"{r['shots']:5d}  {r['ece_plain']:9.4f}  {r['ece_posterior']:13.4f}  "
            f"{r['accuracy']:8.4f}  {r['mean_trace']:12.3f}"
        )


if __name__ == "__main__":
    main()
