"""Per-user operations against the number of users: looking one user up, adding one user.

Side by side in one run: the model's kept index and growing weight rows, and the former way
(rebuild the id -> row dict, concatenate and copy the weight rows on every call).

    python bench/user_ops.py [--users 100000,1000000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lore_rm import LowRankReward

K = 8


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


class FormerWay:
    """What every call did before: a fresh index, and a copied weight table per add."""

    def __init__(self, users: list[str], weights: torch.Tensor) -> None:
        self.users, self.weights = list(users), weights.clone()

    def weights_for(self, ids: list[str]) -> torch.Tensor:
        index = {u: i for i, u in enumerate(self.users)}
        return self.weights[torch.tensor([index[u] for u in ids])]

    def add(self, user: str, w: torch.Tensor) -> None:
        index = {u: i for i, u in enumerate(self.users)}
        if user not in index:
            self.users = self.users + [user]
            self.weights = torch.cat([self.weights, torch.zeros(1, K)])
            index = {u: i for i, u in enumerate(self.users)}
        self.weights = self.weights.clone()
        self.weights[index[user]] = w


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", default="100000,1000000")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    print(f"{'users':>9} {'operation':<22} {'former ms':>10} {'now ms':>9} {'ratio':>8}")
    for n in (int(x) for x in args.users.split(",")):
        measure(n, args.repeats)


def measure(n: int, repeats: int) -> None:
    """One line per operation for a model of ``n`` users."""
    ids = [f"user-{i:07d}" for i in range(n)]
    w = torch.full((n, K), 1.0 / K)
    model = LowRankReward.from_arrays(torch.randn(16, K), w, ids)
    former = FormerWay(ids, w)
    one = [ids[n // 2]]
    model.weights_for(one)  # the index is built once, then kept
    counter = iter(range(10**9))
    rows = {
        "weights_for(one user)": (
            lambda: former.weights_for(one),
            lambda: model.weights_for(one),
        ),
        "add one new user": (
            lambda: former.add(f"new-{next(counter)}", w[0]),
            lambda: model.set_user_weights([f"new-{next(counter)}"], w[:1]),
        ),
    }
    for name, (old, new) in rows.items():
        a, b = median_ms(old, repeats), median_ms(new, repeats)
        print(f"{n:>9} {name:<22} {a:>10.3f} {b:>9.3f} {a / b:>7.0f}x", flush=True)


if __name__ == "__main__":
    main()
