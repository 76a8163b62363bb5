"""A faithful naive version of the published LoRe loops, for benchmarks and equivalence tests.

Joint step: every user's reward for every comparison (``X @ (V @ softmax(W).T)``, cost
N * d * U per product) with a separate forward for the W step and the V step, as published.
Few-shot: one Adam loop per new user, in Python.
The random draws follow lore-rm's order so the two can be compared number for number.
"""

from __future__ import annotations

import torch


def _alpha_at(alpha: float, step: int, n_iter: int) -> float:
    start, end = int(0.2 * n_iter), int(0.8 * n_iter)
    if step < start:
        return 0.0
    return float(alpha) if step >= end else float(alpha) * (step - start) / (end - start)


def naive_joint_fit(
    x: torch.Tensor,
    users: torch.Tensor,
    n_users: int,
    rank: int,
    *,
    n_iter: int = 1000,
    lr: float = 0.5,
    scale: float = 0.01,
    seed: int = 0,
    alpha: float = 0.0,
    v_ref: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.rand(n_users, rank, generator=gen).requires_grad_(True)
    basis = torch.randn(x.shape[1], rank, generator=gen).requires_grad_(True)
    opt_w = torch.optim.Adam([logits], lr=lr)
    opt_v = torch.optim.Adam([basis], lr=lr)
    rows = torch.arange(x.shape[0])

    def loss_fn() -> torch.Tensor:
        all_rewards = scale * (x @ (basis @ logits.softmax(dim=1).T))  # (N, U)
        return -torch.log(torch.sigmoid(all_rewards[rows, users])).mean()

    for it in range(n_iter):
        opt_w.zero_grad()
        loss_fn().backward()
        opt_w.step()
        opt_v.zero_grad()
        loss = loss_fn()
        a = _alpha_at(alpha, it, n_iter)
        if a > 0 and v_ref is not None:
            cos = torch.nn.functional.cosine_similarity(basis, v_ref[:, None].expand_as(basis), 0)
            loss = loss + a * (1 - cos).mean()
        loss.backward()
        opt_v.step()
    return basis.detach(), logits.detach().softmax(dim=1)


def naive_fewshot(
    x: torch.Tensor,
    users: torch.Tensor,
    n_users: int,
    basis: torch.Tensor,
    *,
    n_iter: int = 500,
    lr: float = 0.1,
    scale: float = 0.01,
    seed: int = 0,
) -> torch.Tensor:
    """One Adam fit per user, looping over users in Python (seed is the fit's seed)."""
    gen = torch.Generator().manual_seed(seed + 1)
    init = torch.randn(n_users, basis.shape[1], generator=gen)
    out = torch.empty(n_users, basis.shape[1])
    for u in range(n_users):
        xu = x[users == u]
        theta = init[u].clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr)
        for _ in range(n_iter):
            opt.zero_grad()
            r = scale * (xu @ basis @ theta.softmax(dim=0))
            (-torch.log(torch.sigmoid(r)).mean()).backward()
            opt.step()
        out[u] = theta.detach().softmax(dim=0)
    return out
