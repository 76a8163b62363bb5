"""Joint fit (basis + seen users' weights) and few-shot fit (new users, basis frozen).

Every step costs one ``X @ V`` and one ``X.T @ G`` over the comparisons (see
:mod:`lore_rm.comparisons`) plus O(N * K) work: no loop over users or comparisons.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from lore_rm.comparisons import Comparisons
from lore_rm.errors import ConvergenceWarning, DivergenceError, LoreError
from lore_rm.fit import lbfgs
from lore_rm.fit.config import FALLBACK_PRIOR, LEARNED, FitConfig
from lore_rm.fit.link import joint_weights, weights_of
from lore_rm.fit.objective import JointObjective, newton_point, reference_penalty
from lore_rm.fit.prior import LogitPrior, isotropic_prior
from lore_rm.fit.saddle import escape, spread
from lore_rm.fit.start import initial_point
from lore_rm.progress import progress_bar

Tensor = torch.Tensor
CHECK_EVERY = 25  # L-BFGS iterations between convergence / guard checks
MAX_ESCAPES = 3  # pooled saddles left per solve (lore_rm.fit.saddle)
MAX_RESTARTS = 3  # fresh L-BFGS memories after a stall above tol
FEWSHOT_TOL = 1e-7  # the few-shot L-BFGS's tolerance on its largest gradient entry
#: the few-shot Newton's, on every user's largest gradient entry (of their summed loss)
FEWSHOT_NEWTON_TOL = 1e-5
PATH_TOL = 1e-3  # the ridge path's intermediate fits: the loose tolerance the search walks them at
#: precision of the prior on a user's signed offset (per summed loss over their comparisons).
#: Fixed, not learned: with the ridge on the basis a learned prior trades the scale of the
#: basis columns against the offsets' without end; measured in docs/measurements.md
SIGNED_PRIOR = 3.0


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


def fit_joint(
    data: Comparisons,
    rank: int,
    cfg: FitConfig,
    reference_head: Tensor | None = None,
    *,
    progress: bool = False,
    sigma: Tensor | None = None,
) -> JointFit:
    """Fit a rank-``rank`` basis and the weights of every user in ``data.user_ids``;
    ``sigma`` is :func:`feature_scale` of ``data`` where the caller already has it."""
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    n_users = data.n_users
    if cfg.solver == "adam-alternating":
        fit = _fit_adam_alternating(data, rank, cfg, reference_head, gen, progress)
    else:
        fit = _fit_lbfgs(data, rank, cfg, reference_head, gen, progress, sigma)
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


def feature_scale(data: Comparisons, standardize: bool) -> Tensor:
    """Per-dimension RMS of the feature rows (the fit's units); ones when not standardising."""
    if not standardize:
        return torch.ones(data.d, device=data.device)
    _, rms = data.feature_moments()
    sigma = rms.to(torch.float32)
    return torch.where(sigma > 1e-6 * sigma.max(), sigma, sigma.max()).to(data.device)


@dataclass
class LbfgsResult:
    basis: Tensor  # (G, d, K) in the fit's (standardised) units
    logits: Tensor  # (G, U, K)
    iterations: int
    converged: bool  # the gradient is within tol at a verified minimum (not a pooled saddle)
    loss: list[float]
    escapes: int = 0  # pooled saddles left (lore_rm.fit.saddle)
    restarts: int = 0  # stalls above tol after which L-BFGS restarted its memory
    memory: LbfgsMemory | None = None  # its last curvature pairs, for a warm-started next fit


@dataclass
class LbfgsMemory:
    """L-BFGS curvature pairs (m, P) float64 and the ridges (G,) they were measured under: a
    fit of the same problems at other ridges starts from them (:meth:`lbfgs.LbfgsState.recall`
    corrects them exactly, the ridge being a quadratic on the basis alone)."""

    steps: Tensor
    changes: Tensor
    decay: Tensor


def solve_lbfgs(
    data: Comparisons,
    sigma: Tensor,
    basis0: Tensor,
    logits0: Tensor,
    weight_decay: Sequence[float],
    cfg: FitConfig,
    reference_head: Tensor | None = None,
    row_weights: Tensor | None = None,
    *,
    stop_rows: Tensor | None = None,
    logit_prior: LogitPrior | None = None,
    memory: LbfgsMemory | None = None,
    progress: bool = False,
    desc: str = "joint fit",
) -> LbfgsResult:
    """Joint L-BFGS on G independent problems over the same comparisons, run to convergence.

    Problem g has basis ``basis0[g]`` (d, K) in standardised units, logits ``logits0[g]``
    (U, K), ridge ``weight_decay[g]`` and row weights ``row_weights[g]`` (N,) (None: every
    row). The objective is the sum of the problems' objectives, so they are independent;
    one ``X @ V`` with G*K columns serves them all (cross-validation folds fit as one).
    ``stop_rows`` (G == 1 only) are held out for the optional early-stopping guard.
    ``logit_prior`` adds every user's negative log prior ``0.5 (theta_u - mu)^T P (theta_u -
    mu)`` to the summed row losses (both divided by the rows' total weight): the joint MAP of
    a hierarchical model whose users are drawn from that prior. ``memory``: the curvature
    pairs of a fit of the same problems (same parameters, other ridges) warm-started from,
    as a ridge path's next fit is.
    """
    n_problems, d, rank = basis0.shape
    device = data.device
    if row_weights is None:
        row_weights = torch.ones(n_problems, data.n, device=device)
    if stop_rows is not None:
        row_weights = row_weights.clone()
        row_weights[:, stop_rows] = 0.0
    decay = torch.as_tensor(list(weight_decay), dtype=torch.float32, device=device)
    objective = JointObjective(
        data,
        sigma,
        row_weights,
        decay,
        cfg.scale,
        cfg.space,
        user_l2=cfg.user_l2,
        signed_prior=SIGNED_PRIOR,
        logit_prior=logit_prior,
        reference=(cfg.alpha, reference_head, cfg.regularizer)
        if cfg.alpha > 0 and reference_head is not None
        else None,
    )
    params = _Parameters(objective, basis0.to(device), logits0.to(device), cfg.tol)
    fun = params.fun
    with torch.no_grad():
        state = lbfgs.start(fun, params.x0)
        if memory is not None and memory.steps.shape[1] == state.x.numel():
            shift = _ridge_shift(decay - memory.decay, basis0, state.x.numel())
            state.recall(memory.steps, memory.changes, shift)
        losses: list[float] = []
        done, converged, stale, escapes, restarts = 0, False, 0, 0, 0
        best_val, best = math.inf, (*params.split(state.point), 0)
        bar = progress_bar(cfg.n_iter, desc, progress)
        while done < cfg.n_iter:
            before = state.iterations
            why = lbfgs.minimize(
                fun, state, min(CHECK_EVERY, cfg.n_iter - done), cfg.tol, lr=cfg.lr
            )
            steps = state.iterations - before
            done += steps
            bar.update(steps)
            losses.append(state.loss)
            _check_finite_params(*params.split(state.point))
            if why == "tol":  # the gradient is within tol: a minimum, or the pooled saddle?
                moved = _leave_saddle(objective, *params.split(state.point), escapes < MAX_ESCAPES)
                if moved is None:
                    converged = True
                    break
                escapes += 1
                state = lbfgs.start(fun, params.join(*moved))
            elif why == "stall":  # no way down along the direction above tol: a fresh memory
                if restarts >= MAX_RESTARTS:
                    break
                restarts += 1
                state = lbfgs.start(fun, state.point)
            if stop_rows is not None:
                held = objective.margins(*params.split(state.point))[0, stop_rows]
                val = float(F.softplus(-held).mean())
                if val < best_val - 1e-6:
                    best_val, best, stale = val, (*params.split(state.point), done), 0
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
        bar.close()
    basis, logits = params.split(state.point)
    if stop_rows is not None:
        basis_out, logits_out = best[0], best[1]
    else:
        basis_out, logits_out = basis.detach(), logits.detach()
    if not converged and stop_rows is None and cfg.n_iter > 0:
        why = (
            f"stopped on its iteration cap (n_iter = {cfg.n_iter})"
            if done >= cfg.n_iter
            else f"stalled {restarts + 1} times"
        )
        warnings.warn(
            f"{desc}: L-BFGS {why} before reaching its tolerance (tol = {cfg.tol:g}); raise n_iter",
            ConvergenceWarning,
            stacklevel=3,
        )
    kept = None
    if state.steps is not None and state.changes is not None:
        kept = LbfgsMemory(state.steps, state.changes, decay)
    return LbfgsResult(basis_out, logits_out, done, converged, losses, escapes, restarts, kept)


def _ridge_shift(change: Tensor, basis: Tensor, n_params: int) -> Tensor:
    """Every parameter's change of curvature (``n_params``,) float64 when problem g's ridge
    changes by ``change[g]``: the basis' entries (problem-major, as :class:`_Parameters` lays
    them out) get it; the signed weights' offsets, after them, none."""
    shift = torch.zeros(n_params, dtype=torch.float64, device=basis.device)
    per_basis = change.double().repeat_interleave(basis[0].numel())
    shift[: per_basis.numel()] = per_basis
    return shift


class _Parameters:
    """What L-BFGS moves. Simplex weights: the basis alone, every user's logits being the best
    for it (variable projection: :meth:`JointObjective.best_point`); the loss and the basis'
    gradient are those at the users' best logits (the users' own gradient is within a tenth
    of ``tol`` there). Every evaluation's users start from the logits of the lowest loss
    evaluated so far, the point L-BFGS stands on (it only moves downhill): from a rejected
    trial's logits, some users can settle elsewhere, and the loss at the current basis is no
    longer the one L-BFGS holds, so no step verifies a decrease (measured in
    docs/measurements.md, seventh pass). Signed weights, whose users are tied by their
    pinned mean: the basis and every user's offsets together."""

    def __init__(self, objective: JointObjective, basis0: Tensor, logits0: Tensor, tol: float):
        self.objective = objective
        self.shape = basis0.shape
        self.reduced = objective.space == "simplex"
        self.logits = logits0.float().clone()
        self.user_tol = 0.1 * tol
        self.evaluated: Tensor | None = None  # the basis the logits are best for
        self.anchor = self.logits  # the users' logits at the lowest loss evaluated
        self.anchor_loss = math.inf
        self.x0 = self.join(basis0.float(), self.logits)

    def join(self, basis: Tensor, logits: Tensor) -> Tensor:
        """The vector L-BFGS moves, from ``basis`` and the users' ``logits`` (simplex: the
        next evaluation's users start from these, the point L-BFGS starts from)."""
        if self.reduced:
            self.logits = logits.clone()
            self.anchor, self.anchor_loss = self.logits, math.inf
            return basis.reshape(-1).clone()
        return torch.cat([basis.reshape(-1), logits.reshape(-1)])

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = self.shape.numel()
        if self.reduced:
            if self.evaluated is None or not torch.equal(x, self.evaluated):
                self.fun(x)  # the users' best logits for this basis (a rejected trial's may be)
            return x.view(self.shape), self.logits
        return x[:n].view(self.shape), x[n:].view(self.shape[0], -1, self.shape[2])

    def fun(self, x: Tensor) -> tuple[float, Tensor]:
        if not self.reduced:
            loss, g_basis, g_logits = self.objective.value_and_grad(*self.split(x))
            return float(loss), torch.cat([g_basis.reshape(-1), g_logits.reshape(-1)])
        self.evaluated = x.clone()
        basis = x.view(self.shape)
        point, _ = self.objective.best_point(
            self.objective.projected(basis), self.anchor, self.user_tol
        )
        self.logits = point.logits
        loss, g_basis = self.objective.basis_value_and_grad(basis, point)
        value = float(loss)
        if value <= self.anchor_loss:
            self.anchor, self.anchor_loss = self.logits, value
        return value, g_basis.reshape(-1)


def _leave_saddle(
    objective: JointObjective, basis: Tensor, logits: Tensor, may_escape: bool
) -> tuple[Tensor, Tensor] | None:
    """At a stop within tol: None when it is a minimum (not the pooled configuration, or a
    pooled point the escape probe cannot leave, :mod:`lore_rm.fit.saddle`); else the
    parameters moved downhill along the escape direction."""
    if basis.shape[2] < 2 or not may_escape:
        return None
    flagged = spread(basis, logits, objective.space, objective.present).pooled
    new_basis, new_logits, moved = escape(objective, basis, logits, flagged)
    return (new_basis, new_logits) if bool(moved.any()) else None


def _check_finite_params(basis: Tensor, logits: Tensor) -> None:
    for name, t in (("basis V", basis), ("user logits W", logits)):
        if not bool(torch.isfinite(t).all()):
            raise DivergenceError(
                f"the fit diverged: the {name} holds NaN or inf; lower lr or raise weight_decay"
            )


def ridge_path(target: float, cfg: FitConfig) -> list[float]:
    """The ridges a fit at ``target`` passes through: the grid's weaker values (from
    ``cfg.ridge_path_start`` on, when set), then target.

    The cross-validation scores each ridge warm-started from the weaker one before it; a fit
    started cold at a strong ridge can instead stop at the pooled saddle (every column alike,
    every user uniform). Following the same path makes an explicit fit equal to the cell
    the search scored.
    """
    if not cfg.ridge_path:
        return [target]
    start = -math.inf if cfg.ridge_path_start is None else cfg.ridge_path_start
    return [w for w in sorted(cfg.weight_decay_grid) if start <= w < target] + [target]


def _fit_lbfgs(data, rank, cfg, v_ref, gen, progress, sigma=None) -> JointFit:
    """Joint L-BFGS on (V, W) over standardised features from an informed start."""
    sigma = feature_scale(data, cfg.standardize) if sigma is None else sigma
    basis, logits = initial_point(data, sigma, rank, cfg.init, gen, space=cfg.space)
    basis, logits = basis[None], logits[None]
    stop_rows = None
    if cfg.validation_fraction:
        n_val = max(1, int(round(cfg.validation_fraction * data.n)))
        stop_rows = torch.randperm(data.n, generator=gen)[:n_val].to(data.device)
    weight_decay = cfg.weight_decay
    if not isinstance(weight_decay, int | float):
        raise LoreError("weight_decay='auto' is resolved by LowRankReward.fit before fitting")
    path = ridge_path(float(weight_decay), cfg)
    iterations = 0
    memory: LbfgsMemory | None = None
    if len(path) > 1:
        fit_rows = torch.ones(1, data.n, device=data.device)
        if stop_rows is not None:
            fit_rows[:, stop_rows] = 0.0
        bar = progress_bar(len(path) - 1, "ridge path", progress)
        step_cfg = replace(cfg, tol=max(cfg.tol, PATH_TOL))
        for decay in path[:-1]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                step = solve_lbfgs(
                    data, sigma, basis, logits, [decay], step_cfg, v_ref, fit_rows,
                    memory=memory, desc="path",
                )  # fmt: skip
            basis, logits, iterations = step.basis, step.logits, iterations + step.iterations
            memory = step.memory
            bar.update(1)
        bar.close()
    res = solve_lbfgs(
        data,
        sigma,
        basis,
        logits,
        [path[-1]],
        cfg,
        v_ref,
        stop_rows=stop_rows,
        memory=memory,
        progress=progress,
    )
    history = {
        "loss": res.loss,
        "iterations": res.iterations,
        "path_iterations": iterations,
        "ridge_path": path,
        "converged": res.converged,
        "saddle_escapes": res.escapes,
        "init": cfg.init,
    }
    weights = joint_weights(res.logits[0], cfg.space)
    return JointFit(res.basis[0] / sigma[:, None], weights, history)


def signed_prior(population_weights: Tensor) -> LogitPrior:
    """Every user's prior for signed weights, in the joint fit as in the few-shot fit:
    ``N(population weights, I / SIGNED_PRIOR)``."""
    return isotropic_prior(population_weights, SIGNED_PRIOR, "signed")


def fit_user_weights(
    data: Comparisons,
    basis: Tensor,
    scale: float,
    cfg: FitConfig,
    population_weights: Tensor,
    *,
    prior: LogitPrior | None = None,
    projected: Tensor | None = None,
    average_over: float | None = None,
    progress: bool = False,
) -> Tensor:
    """Weights (U, K) for every user of ``data.user_ids`` with the basis frozen.

    The MAP under ``prior`` (default: the isotropic prior of strength ``cfg.fewshot_prior``,
    or of the fallback strength when that is ``'learned'``, around the population's mean
    weights; a prior's mean may also be one row per user, (U, K)). ``projected`` is
    ``data.project(basis)`` when the caller has it already. Users without comparisons get the
    population's mean weights (``population_weights``: (K,), or (U, K) one per user). The
    'lbfgs' solver minimises the mean over ``average_over`` users (default all of them) of
    their objectives: a batch of independent problems passes one problem's count, so its
    tolerance means for each what it means for one problem alone ('newton' stops each user
    on their own gradient).
    """
    k = basis.shape[1]
    n_users = data.n_users
    device = basis.device
    if k <= 1:
        return torch.ones(n_users, k, device=device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    z = (data.project(basis) if projected is None else projected).detach()  # (N, K)
    u = data.user_index
    counts = torch.bincount(u, minlength=n_users).to(z.dtype)
    if prior is None:
        strength = FALLBACK_PRIOR if cfg.fewshot_prior == LEARNED else cfg.fewshot_prior
        prior = isotropic_prior(population_weights, float(strength), cfg.space)
    prior = prior.to(device)
    space = prior.space
    start = prior.mean.to(device, z.dtype)

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
            loss = loss + prior.penalty(logits)
            loss.backward()
            opt.step()
            bar.update(1)
        bar.close()
        weights = logits.detach().softmax(dim=1)
    elif cfg.fewshot_solver == "newton":  # float64: a user's summed loss over many rows
        precision = prior.precision.to(device, torch.float64)
        mean = prior.mean.to(device, torch.float64)

        def penalty(lg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            diff = lg - mean
            pd = diff @ precision
            return 0.5 * (pd * diff).sum(-1), pd, precision.expand(1, 1, k, k)

        z64 = z.double()[:, None, :]
        logits0 = start.double().expand(n_users, k)[None].contiguous()
        rows = torch.ones(z.shape[0], 1, dtype=torch.float64, device=device)
        point, _ = newton_point(
            z64, logits0, u, rows, scale, penalty, FEWSHOT_NEWTON_TOL, cfg.fewshot_n_iter, space
        )
        weights = weights_of(point.logits[0], space).to(z.dtype)
    else:
        precision = prior.precision.to(device, z.dtype)
        mean = prior.mean.to(device, z.dtype)
        per_user = 1.0 / max(n_users if average_over is None else average_over, 1)

        def fun(x: Tensor) -> tuple[float, Tensor]:
            logits = x.view(n_users, k)
            w = weights_of(logits, space)
            m = scale * (z * w[u]).sum(1)
            diff = logits - mean
            pd = diff @ precision
            loss = F.softplus(-m).sum(dtype=torch.float64) + 0.5 * (pd * diff).sum(
                dtype=torch.float64
            )
            g_w = torch.zeros_like(w).index_add_(0, u, (-scale * torch.sigmoid(-m))[:, None] * z)
            if space == "simplex":
                g_w = w * (g_w - (w * g_w).sum(1, keepdim=True))
            return float(loss) * per_user, ((g_w + pd) * per_user).reshape(-1)

        x0 = start.expand(n_users, k).reshape(-1)
        with torch.no_grad():
            state = lbfgs.start(fun, x0)
            if cfg.fewshot_n_iter > 0:
                lbfgs.minimize(fun, state, cfg.fewshot_n_iter, FEWSHOT_TOL, lr=cfg.fewshot_lr)
        logits = state.point.view(n_users, k)
        weights = weights_of(logits, space).clone()
    empty = counts == 0
    if empty.any():
        fill = population_weights.to(device, weights.dtype)
        weights[empty] = fill[empty] if fill.dim() == 2 else fill
    return weights
