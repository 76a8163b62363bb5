"""Upper bounds for new users on the PersonalLLM-sized planted problem (accuracy suite's (e)).

Two bounds on unseen-user test accuracy after the 9-shot fit, neither reachable by a fit that
knows only the comparisons:

* the TRUE basis with the fitted 9-shot weights (the best any learned basis could give);
* a basis learned with the seen users' TRUE weights given (a ridge logistic regression over
  d x K parameters, each ridge of --ridges; the best is chosen in hindsight): what 47,000
  noisy comparisons can teach about the basis when the weights are not also to be learned.

    python bench/personal_bounds.py [--seed 0] [--ridges 100,300,1000]

Prints each bound, its share of the chance-to-oracle gap, and the cosine of the learned basis
to the truth. Takes about 2 minutes per ridge value on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from lore_rm import LowRankReward, PopulationConfig, simulate_population

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import PLANTED  # noqa: E402


def unseen_accuracy(pop, basis: torch.Tensor, prior: float = 0.3) -> float:
    split = pop.split
    seen = split.seen_train
    model = LowRankReward.from_arrays(
        basis, pop.true_weights["seen"], seen.user_ids, fewshot_prior=prior
    )
    model.personalize(split.unseen_fewshot)
    return model.score(split.unseen_test)


def basis_from_true_weights(pop, ridge: float) -> torch.Tensor:
    """The ridge-regularised maximum-likelihood basis (raw units) with the weights known."""
    data = pop.split.seen_train
    x = data.project(torch.eye(data.d))  # (N, d) chosen - rejected
    rms = x.pow(2).mean(0).sqrt()
    x = x / rms
    w = pop.true_weights["seen"][data.user_index]
    n, d = x.shape
    v = torch.zeros(d, w.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS(
        [v], lr=1, max_iter=300, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        margins = ((x @ v) * w).sum(1)
        loss = F.softplus(-margins).mean() + ridge / (2 * n) * v.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return v.detach() / rms[:, None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ridges", default="100,300,1000")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    pop = simulate_population(PopulationConfig(seed=args.seed, **PLANTED["personal"]))
    oracle = pop.oracle["unseen_test"]

    def gap(acc: float) -> str:
        return f"{acc:.4f} ({100 * (acc - 0.5) / (oracle - 0.5):.0f}% of the gap)"

    print(f"oracle (true basis and true weights): {oracle:.4f}")
    print(f"true basis, 9-shot weights:           {gap(unseen_accuracy(pop, pop.true_basis))}")
    for ridge in (float(r) for r in args.ridges.split(",")):
        t0 = time.perf_counter()
        basis = basis_from_true_weights(pop, ridge)
        cos = F.cosine_similarity(basis, pop.true_basis, dim=0)
        print(
            f"basis learned with true weights, ridge {ridge:g}: {gap(unseen_accuracy(pop, basis))}"
            f"; cosine to the truth {', '.join(f'{c:.2f}' for c in cos.tolist())} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
