"""Joint fit (basis + seen users' weights) and few-shot fit (new users, basis frozen).

Every step costs one ``X @ V`` and one ``X.T @ G`` over the comparisons (see
:mod:`lore_rm.comparisons`) plus O(N * K) work: no loop over users or comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lore_rm.comparisons import Comparisons
from lore_rm.fit.config import FitConfig
from lore_rm.progress import progress_bar

Tensor = torch.Tensor


@dataclass
class JointFit:
    basis: Tensor  # (d, K) in raw embedding units: reward = scale * e @ basis @ w
    user_weights: Tensor  # (U, K), rows on the simplex (sub-simplex after pruning)
    history: dict = field(default_factory=dict)


def bt_margins(z: Tensor, weights: Tensor, user_index: Tensor, scale: float) -> Tensor:
    """Bradley–Terry logits ``s * x V w_u`` from projected rows ``z = X V``."""
    return scale * (z * weights[user_index]).sum(dim=1)


def alpha_at(cfg: FitConfig, iteration: int) -> float:
    """The published warm-up: 0 until warmup[0], linear ramp to alpha at warmup[1]."""
    if cfg.alpha == 0.0 or cfg.n_iter == 0:
        return cfg.alpha
    start, end = int(cfg.warmup[0] * cfg.n_iter), int(cfg.warmup[1] * cfg.n_iter)
    if iteration < start:
        return 0.0
    if iteration >= end:
        return cfg.alpha
    return cfg.alpha * (iteration - start) / (end - start)


def reference_penalty(basis: Tensor, v_ref: Tensor, kind: str) -> Tensor:
    if kind == "cosine":
        cos = F.cosine_similarity(basis, v_ref[:, None].expand_as(basis), dim=0)
        return (1.0 - cos).mean()
    return ((basis - v_ref[:, None]) ** 2).sum()


def fit_joint(
    data: Comparisons,
    rank: int,
    cfg: FitConfig,
    reference_head: Tensor | None = None,
    *,
    progress: bool = False,
) -> JointFit:
    """Fit a rank-``rank`` basis and the weights of every user in ``data.user_ids``."""
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    n_users = data.n_users
    if rank == 1:
        # one pooled Bradley–Terry reward: the single weight is 1 for everyone
        pass
    if cfg.solver == "adam-alternating":
        fit = _fit_adam_alternating(data, rank, cfg, reference_head, gen, progress)
    else:
        fit = _fit_lbfgs(data, rank, cfg, reference_head, gen, progress)
    if cfg.prune_threshold is not None and rank > 1:
        keep = fit.user_weights.max(dim=0).values >= cfg.prune_threshold
        if not keep.any():
            keep[fit.user_weights.max(dim=0).values.argmax()] = True
        fit.history["pruned_columns"] = int((~keep).sum())
        fit = JointFit(fit.basis[:, keep], fit.user_weights[:, keep], fit.history)
    assert fit.user_weights.shape[0] == n_users
    return fit


def _init_adam_params(data, rank, gen, device):
    # the published order of draws: W ~ U(0, 1) first, then V ~ N(0, 1)
    w = torch.rand(data.n_users, rank, generator=gen).to(device)
    v = torch.randn(data.d, rank, generator=gen).to(device)
    return v.requires_grad_(True), w.requires_grad_(True)


def _fit_adam_alternating(data, rank, cfg, v_ref, gen, progress) -> JointFit:
    """The published loop: per iteration one Adam step on W (V fixed), then one on V."""
    device = data.device
    basis, logits = _init_adam_params(data, rank, gen, device)
    opt_w = torch.optim.Adam([logits], lr=cfg.lr)
    opt_v = torch.optim.Adam([basis], lr=cfg.lr)
    u = data.user_index
    losses = []
    bar = progress_bar(cfg.n_iter, "joint fit (paper)", progress)
    for it in range(cfg.n_iter):
        with torch.no_grad():
            z = data.project(basis)  # one X @ V per iteration, shared by both steps
        # W step
        opt_w.zero_grad(set_to_none=True)
        loss_w = F.softplus(-bt_margins(z, logits.softmax(dim=1), u, cfg.scale)).mean()
        loss_w.backward()
        opt_w.step()
        # V step, with W as just updated
        zg = z.requires_grad_(True)
        loss_v = F.softplus(-bt_margins(zg, logits.detach().softmax(dim=1), u, cfg.scale)).mean()
        (g,) = torch.autograd.grad(loss_v, zg)
        opt_v.zero_grad(set_to_none=True)
        grad_v = data.backproject(g)  # one X.T @ G per iteration
        a = alpha_at(cfg, it)
        if a > 0.0 and v_ref is not None:
            with torch.enable_grad():
                b = basis.detach().requires_grad_(True)
                (g_reg,) = torch.autograd.grad(a * reference_penalty(b, v_ref, cfg.regularizer), b)
            grad_v = grad_v + g_reg
        basis.grad = grad_v
        opt_v.step()
        losses.append(float(loss_v.detach()))
        bar.update(1)
    bar.close()
    weights = logits.detach().softmax(dim=1)
    return JointFit(basis.detach(), weights, {"loss": losses, "iterations": cfg.n_iter})


def _fit_lbfgs(data, rank, cfg, v_ref, gen, progress) -> JointFit:
    """Joint L-BFGS on (V, W) over standardised features, early-stopped on held-out rows."""
    device = data.device
    if cfg.standardize:
        _, rms = data.feature_moments()
        sigma = rms.to(torch.float32)
        sigma = torch.where(sigma > 1e-6 * sigma.max(), sigma, sigma.max()).to(device)
    else:
        sigma = torch.ones(data.d, device=device)
    n_val = int(round(cfg.validation_fraction * data.n)) if cfg.validation_fraction else 0
    perm = torch.randperm(data.n, generator=gen).to(device)
    train, val = (data.subset(perm[n_val:]), data.subset(perm[:n_val])) if n_val else (data, None)

    basis = (torch.randn(data.d, rank, generator=gen) / math.sqrt(data.d)).to(device)
    logits = (0.01 * torch.randn(data.n_users, rank, generator=gen)).to(device)
    basis.requires_grad_(True)
    logits.requires_grad_(True)

    def objective(part: Comparisons, regularise: bool) -> Tensor:
        raw = basis / sigma[:, None]
        z = part.project(raw)
        loss = F.softplus(-bt_margins(z, logits.softmax(dim=1), part.user_index, cfg.scale)).mean()
        if regularise:
            loss = loss + 0.5 * cfg.weight_decay * (basis**2).sum()
            loss = loss + 0.5 * cfg.user_l2 * (logits**2).sum() / max(data.n_users, 1)
            if cfg.alpha > 0 and v_ref is not None:
                loss = loss + cfg.alpha * reference_penalty(raw, v_ref, cfg.regularizer)
        return loss

    opt = torch.optim.LBFGS(
        [basis, logits],
        lr=cfg.lr,
        max_iter=10,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = objective(train, True)
        loss.backward()
        return loss

    best = (math.inf, basis.detach().clone(), logits.detach().clone(), 0)
    history = {"loss": [], "val_loss": []}
    stale, done, prev = 0, 0, math.inf
    bar = progress_bar(cfg.n_iter, "joint fit", progress)
    while done < cfg.n_iter:
        loss = float(opt.step(closure).detach())
        state = opt.state[opt._params[0]]
        step = int(state.get("n_iter", done + 1)) - done
        done += max(step, 1)
        bar.update(max(step, 1))
        history["loss"].append(loss)
        if val is not None:
            with torch.no_grad():
                vloss = float(objective(val, False))
            history["val_loss"].append(vloss)
            if vloss < best[0] - 1e-6:
                best = (vloss, basis.detach().clone(), logits.detach().clone(), done)
                stale = 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        if abs(prev - loss) < 1e-9 or step == 0:
            break
        prev = loss
    bar.close()
    if val is None:
        best = (math.nan, basis.detach().clone(), logits.detach().clone(), done)
    history["iterations"] = done
    history["best_iteration"] = best[3]
    raw = best[1] / sigma[:, None]
    return JointFit(raw, best[2].softmax(dim=1), history)


def population_logits(population_weights: Tensor) -> Tensor:
    """Centred log-weights whose softmax is the population's mean weight vector."""
    p = population_weights.clamp_min(1e-6)
    p = p / p.sum()
    lg = p.log()
    return lg - lg.mean()


def fit_user_weights(
    data: Comparisons,
    basis: Tensor,
    scale: float,
    cfg: FitConfig,
    population_weights: Tensor,
    *,
    progress: bool = False,
) -> Tensor:
    """Weights (U, K) for every user of ``data.user_ids`` with the basis frozen.

    Users without comparisons get the population's mean weights.
    """
    k = basis.shape[1]
    n_users = data.n_users
    device = basis.device
    if k <= 1:
        return torch.ones(n_users, k, device=device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    z = data.project(basis).detach()  # (N, K): the rest is independent of d
    u = data.user_index
    counts = torch.bincount(u, minlength=n_users).to(z.dtype)
    prior = population_logits(population_weights.to(device))

    if cfg.fewshot_solver == "adam":
        logits = torch.randn(n_users, k, generator=gen).to(device).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=cfg.fewshot_lr)
        inv = (1.0 / counts.clamp_min(1.0))[u]
        bar = progress_bar(cfg.fewshot_n_iter, "few-shot (paper)", progress)
        for _ in range(cfg.fewshot_n_iter):
            opt.zero_grad(set_to_none=True)
            # sum over users of each user's mean loss: Adam is elementwise, so this equals
            # fitting every user on their own
            per_row = F.softplus(-bt_margins(z, logits.softmax(dim=1), u, scale))
            loss = (per_row * inv).sum()
            if cfg.fewshot_prior > 0:
                loss = loss + 0.5 * cfg.fewshot_prior * ((logits - prior) ** 2).sum()
            loss.backward()
            opt.step()
            bar.update(1)
        bar.close()
        weights = logits.detach().softmax(dim=1)
    else:
        logits = prior.expand(n_users, k).clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [logits],
            lr=cfg.fewshot_lr,
            max_iter=cfg.fewshot_n_iter,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
        )

        def closure():
            opt.zero_grad(set_to_none=True)
            per_row = F.softplus(-bt_margins(z, logits.softmax(dim=1), u, scale))
            loss = per_row.sum() + 0.5 * cfg.fewshot_prior * ((logits - prior) ** 2).sum()
            loss = loss / max(n_users, 1)
            loss.backward()
            return loss

        if cfg.fewshot_n_iter > 0:
            opt.step(closure)
        weights = logits.detach().softmax(dim=1)
    empty = counts == 0
    if empty.any():
        weights[empty] = population_weights.to(device, weights.dtype)
    return weights
