"""Choosing the rank and the ridge by cross-validation over the seen users' comparisons.

What a fold holds out (``cv_holdout``):

* ``"users"`` (the default): whole users, dealt evenly over the folds after a seeded shuffle.
  The fold's basis is fitted on the other users; each held-out user is then scored as a new
  user of that basis: their comparisons are dealt over ``cv_folds`` inner parts, and every
  comparison is predicted by weights fitted (basis frozen, few-shot prior) on the user's other
  parts. This scores what the model is for, new users on a basis that never saw them, and
  each fold's basis is learned from complete users.
* ``"comparisons"``: each user's comparisons are dealt round-robin (after a seeded shuffle)
  over the folds, so every user with at least ``cv_folds`` comparisons is in every fold and
  keeps weights of its own in every training part. Used as well when there are fewer users
  than folds.

Every (rank, ridge) cell fits all
folds at once (one L-BFGS over ``folds`` independent problems: one ``X @ V`` with
``folds * K`` columns), and its held-out users are scored by one batched few-shot fit over
every fold.

For each rank the ridge path runs from WEAK to strong, each cell warm-started from the
previous one (the weakest from the fold's deterministic informed start). The other direction
fails here: a strongly regularised solution sits at the pooled saddle (every column alike,
every user uniform), and a warm start from it stays there at every weaker ridge (measured in
docs/measurements.md). Rank 1's path starts at the grid's weakest ridge; a later rank's
starts ``PATH_BACK`` grid steps weaker than the previous rank's best ridge (and walks the
weaker ridges too when its best is the first it tried), and the refit of the chosen cell
walks the same path (``ridge_path_start``). A rank stops early once its held-out loss has
risen for two stronger ridges in a row. The rank grid stops at the first rank whose best
loose loss does not beat every smaller rank's by ``MIN_GAIN``. When a rank's best ridge is
the grid's strongest, the path goes on past the grid (same ratio, up to ``EDGE_STEPS`` more
values) until the loss rises, so the choice is never clipped there.

Loose, then refined: every cell of the paths is fitted to ``LOOSE_TOL`` (largest gradient
entry) and scored. Then cells are continued to ``SEARCH_TOL`` (warm, from their loose fit)
and scored again, best loose score first, while some unrefined cell could still change the
rule's choice among the refined ones if its loose score overstated its loss by
``REFINE_MARGIN`` or twice the most any refined cell's did (:func:`may_change_choice`): a
cell simpler than the chosen one by entering the band, a more complex one only by becoming
the best with a band that leaves the chosen cell out. The rule below then chooses among the
refined cells; measured in docs/measurements.md ("What the search costs").

With users held out, the chosen cell records ``margin_scale``: the factor by which the true
log-odds exceed its held-out margins (:mod:`lore_rm.fit.calibration`); it calibrates the
fitted model's outputs. Held-out users are scored only on pairs of texts
the fold's basis never saw, as new users meet new prompts (``cv_exclude_pairs``,
:func:`new_pair_split`).

Every cell scores the held-out margins at personalisation strengths ``personalization_grid``
(``w_bar + strength * (w_u - w_bar)``; linear in the strength, so no extra fit) and keeps the
weakest within one paired per-user standard error of the best (:func:`choose_strength`).
When the chosen cell's strength is 0 the search serves the pooled reward instead: the best
rank-1 cell (scored for it if the grid had no rank 1). ``weights="auto"`` scores every rank
above 1 in both weight spaces (:mod:`lore_rm.fit.link`).

The score is the held-out Bradley–Terry log-loss (mean over the fold's comparisons). The
one-standard-error rule then picks the simplest cell (lowest rank, then strongest ridge) whose
mean loss is within one standard error (over folds) of the best.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, cast

import torch
import torch.nn.functional as F

from lore_rm.comparisons import Comparisons
from lore_rm.errors import ConvergenceWarning
from lore_rm.fit.calibration import fit_margin_scale
from lore_rm.fit.config import AUTO, FALLBACK_PRIOR, LEARNED, FitConfig
from lore_rm.fit.link import joint_weights
from lore_rm.fit.posterior import covariance_from_hessian, linear_std, logit_hessian
from lore_rm.fit.prior import isotropic_prior
from lore_rm.fit.search_memo import memo_for
from lore_rm.fit.solvers import (
    LbfgsMemory,
    LbfgsResult,
    fit_user_weights,
    signed_prior,
    solve_lbfgs,
)
from lore_rm.fit.start import initial_point, user_feature_sums
from lore_rm.metrics import user_hits
from lore_rm.progress import progress_bar

Tensor = torch.Tensor
LN2 = math.log(2.0)
SEARCH_TOL = 1e-4  # the cells the choice can fall on; the final refit converges to cfg.tol
LOOSE_TOL = 1e-3  # every cell first (see the module doc: scored loose, then refined)
#: a loose score this far above the best refined cell's band may still reach it
REFINE_MARGIN = 1e-3
MIN_GAIN = 1e-3  # a log-loss gain over a coin flip smaller than this (or than its SE) is none
RANK_PATIENCE = 1  # larger ranks tried after one that does not gain MIN_GAIN on the best
PATH_BACK = 2  # a rank's ridge path starts this many steps weaker than the last rank's best
#: the most memory the folds' per-user feature sums may keep between ranks (else recomputed)
FOLD_SUMS_BYTES = 256 * 2**20
EDGE_STEPS = 4  # extra, stronger ridges tried when a rank's best sits at the grid's strong end


@dataclass
class Selection:
    """The outcome of a search: the chosen cell and the whole curve."""

    rank: int
    weight_decay: float
    weights: Literal["simplex", "signed"]  # the chosen cell's weight space
    rows: list[dict]
    rule: str
    folds: int
    n_fits: int
    seconds: float
    pooled: dict | None = None  # the best rank-1 cell (the pooled Bradley–Terry reward)
    holdout: str = "comparisons"  # what a fold held out: "users" or "comparisons"
    notes: list[str] = field(default_factory=list)
    #: the cell that found no personalisation paying, when the pooled reward replaced it
    zero_personalization: dict | None = None
    refined: int = 0  # cells continued from the loose tolerance to the search's
    #: fold fits taken from an earlier search over the same data (search_memo), not run again
    reused_fits: int = 0
    #: where the chosen cell's ridge path started, when later than the grid's weakest value
    path_start: float | None = None

    @property
    def chosen(self) -> dict:
        return next(
            r
            for r in self.rows
            if r["rank"] == self.rank
            and r["weight_decay"] == self.weight_decay
            and r.get("weights", "simplex") == self.weights
        )

    def to_dict(self) -> dict:
        return asdict(self)


def user_folds(data: Comparisons, n_folds: int, generator: torch.Generator) -> Tensor:
    """Fold id (N,) of every comparison: each user's comparisons dealt over the folds."""
    n = data.n
    order = torch.argsort(torch.rand(n, generator=generator))
    users = data.user_index.cpu()
    order = order[torch.argsort(users[order], stable=True)]
    sorted_users = users[order]
    counts = torch.bincount(sorted_users, minlength=data.n_users)
    first = torch.cumsum(counts, 0) - counts
    position = torch.arange(n) - first[sorted_users]
    offset = torch.randint(n_folds, (data.n_users,), generator=generator)  # balances folds
    fold = torch.empty(n, dtype=torch.int64)
    fold[order] = (position + offset[sorted_users]) % n_folds
    return fold.to(data.device)


def held_out_users(data: Comparisons, n_folds: int, generator: torch.Generator) -> Tensor:
    """Fold id (N,) of every comparison: its user's fold, users dealt evenly after a shuffle."""
    user_fold = torch.randperm(data.n_users, generator=generator) % n_folds
    return user_fold.to(data.device)[data.user_index]


def new_pair_split(
    data: Comparisons, held_out: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, float]:
    """Which rows each fold trains on (F, N float) and scores (F, N bool), so that held-out
    users are scored on pairs of texts the fold's basis never saw, as new users meet new
    prompts; and the share of training rows left out for it.

    Every pair of texts is dealt to a fold (seeded). Fold ``f`` scores a held-out user's row
    when no training user of the fold labelled its pair, or when the pair is dealt to ``f``;
    the training rows of those pairs are left out of the fold. Where no two users share a pair
    this scores every held-out row and leaves nothing out; where many do it keeps most of the
    training rows (leaving out every pair a held-out user labelled would leave out most of
    them) and scores the held-out rows of a fifth of the pairs. Dense comparisons name no
    texts: every held-out row is scored, nothing left out."""
    train = ~held_out
    pairs = data.pair_ids()
    if pairs is None or not data.n:
        return train.to(torch.float32), held_out, 0.0
    n_folds = held_out.shape[0]
    n_pairs = int(pairs.max()) + 1
    dealt = (torch.randperm(n_pairs, generator=generator) % n_folds).to(pairs.device)
    trained = torch.zeros(n_folds, n_pairs, dtype=torch.bool, device=held_out.device)
    f, rows = train.nonzero(as_tuple=True)
    trained[f, pairs[rows]] = True
    folds = torch.arange(n_folds, device=held_out.device)[:, None]
    scored = held_out & (~trained[:, pairs] | (dealt[pairs][None, :] == folds))
    left_out = torch.zeros_like(trained)
    f, rows = scored.nonzero(as_tuple=True)
    left_out[f, pairs[rows]] = True
    keep = train & ~left_out[:, pairs]
    share = 1.0 - float(keep.sum()) / max(float(train.sum()), 1.0)
    return keep.to(torch.float32), scored, share


def _new_user_scores(
    data: Comparisons,
    sigma: Tensor,
    basis: Tensor,
    logits: Tensor,
    held_out: Tensor,
    inner: Tensor,
    cfg: FitConfig,
    with_std: bool = True,
) -> HeldOut:
    """Per fold: held-out users scored as new users of the fold's basis.

    Each held-out user's comparisons are dealt over ``inner`` folds; every comparison is
    scored by weights fitted (basis frozen, few-shot prior around the fold's mean weights) on
    that user's comparisons of the other inner folds. Every fold's held-out users and all
    their inner splits are one batched few-shot fit (a user is held out by one fold). Returns
    every comparison's held-out margin under those weights and under its fold's mean weights,
    and the std (N,) of the former under the Laplace posterior of the weights that predicted
    it (zero at rank 1, where the weights are fixed, and when ``cfg.calibrate`` is off or
    ``with_std`` false).
    """
    n_folds, d, rank = basis.shape
    n_inner = int(inner.max()) + 1 if inner.numel() else 1
    u = data.user_index
    n_users = data.n_users
    strength = float(FALLBACK_PRIOR if cfg.fewshot_prior == LEARNED else cfg.fewshot_prior)
    space = cfg.space
    with torch.no_grad():
        raw = (basis / sigma[None, :, None]).permute(1, 0, 2).reshape(d, n_folds * rank)
        z = data.project(raw).reshape(-1, n_folds, rank)
        margins = torch.zeros(data.n, dtype=z.dtype, device=z.device)
        shared = torch.zeros(data.n, dtype=z.dtype, device=z.device)
        std = torch.zeros(data.n, dtype=torch.float64, device=z.device)
        rows = held_out.any(0).nonzero()[:, 0]
        if not rows.numel():
            return HeldOut(margins, shared, std)
        row_fold = held_out[:, rows].to(torch.int8).argmax(0)
        user_fold = torch.zeros(n_users, dtype=torch.int64, device=u.device)
        user_fold[u[rows]] = row_fold
        held_users = torch.zeros(n_folds, n_users, dtype=torch.bool, device=u.device)
        held_users[row_fold, u[rows]] = True
        trained = ~held_users
        w = joint_weights(logits, space, trained) * trained[..., None].to(logits.dtype)
        population = w.sum(1) / trained.sum(1, keepdim=True).clamp_min(1).to(w.dtype)  # (F, K)
        zf = z[rows, row_fold]
        rep = torch.arange(rows.numel(), device=rows.device).repeat_interleave(n_inner)
        part = torch.arange(n_inner, device=rows.device).repeat(rows.numel())
        keep = part != inner[rows][rep]
        rep, part = rep[keep], part[keep]
        n_virtual = n_users * n_inner  # (user, inner part); a user's fold is user_fold
        fitted_on = Comparisons.from_features(
            zf[rep],
            cast(Sequence, (u[rows][rep] * n_inner + part).cpu().numpy()),
            user_ids=[str(i) for i in range(n_virtual)],
        )
        fold_of = user_fold.repeat_interleave(n_inner)  # every virtual user's fold
        if space == "signed":
            priors = [signed_prior(population[f]) for f in range(n_folds)]
        else:
            priors = [isotropic_prior(population[f], strength, space) for f in range(n_folds)]
        means = torch.stack([pr.mean for pr in priors])[fold_of]  # (n_virtual, K)
        prior = replace(priors[0], mean=means)
        weights = fit_user_weights(
            fitted_on,
            torch.eye(rank, dtype=zf.dtype, device=zf.device),
            cfg.scale,
            cfg,
            population[fold_of],
            prior=prior,
            projected=zf[rep],
            average_over=n_virtual / n_folds,
        )
        virtual = u[rows] * n_inner + inner[rows]
        own = weights[virtual]
        margins[rows] = cfg.scale * (zf * own).sum(-1)
        shared[rows] = cfg.scale * (zf * population[row_fold].to(zf.dtype)).sum(-1)
        if with_std and cfg.calibrate and rank > 1 and strength > 0:
            precision = prior.precision.to(zf.device)
            h = logit_hessian(
                zf[rep], weights, fitted_on.user_index, cfg.scale, precision, space=space
            )
            floor = float(torch.linalg.eigvalsh(precision)[0])
            cov = covariance_from_hessian(h, floor, "gauss-newton")
            std[rows] = linear_std(zf, own, cov[virtual], cfg.scale, space)
        return HeldOut(margins, shared, std)


def _held_out_scores(
    data: Comparisons,
    sigma: Tensor,
    basis: Tensor,
    logits: Tensor,
    held_out: Tensor,
    fold: Tensor,
    scale: float,
    space: str = "simplex",
) -> HeldOut:
    """Every comparison's margin under the fold that held it out: its user's weights in that
    fold, and the fold's mean weights (users are in every fold's training part)."""
    n_folds, d, rank = basis.shape
    with torch.no_grad():
        raw = (basis / sigma[None, :, None]).permute(1, 0, 2).reshape(d, n_folds * rank)
        z = data.project(raw).reshape(-1, n_folds, rank)[torch.arange(data.n), fold]  # (N, K)
        weights = joint_weights(logits, space)  # (F, U, K)
        own = weights[fold, data.user_index]
        mean = weights.mean(1)[fold]
        margins = scale * (z * own).sum(-1)
        shared = scale * (z * mean).sum(-1)
        return HeldOut(margins, shared, torch.zeros_like(margins, dtype=torch.float64))


@dataclass
class HeldOut:
    """Every comparison's held-out margin (N,) under its user's own weights, under the shared
    (mean) weights, and the std of the former (0 where not computed)."""

    own: Tensor
    shared: Tensor
    std: Tensor

    def at(self, strength: float) -> Tensor:
        """Margins at personalisation ``strength``: shared + strength * (own - shared)."""
        return self.shared + strength * (self.own - self.shared)


def _fold_scores(data: Comparisons, margins: Tensor, held_out: Tensor) -> tuple[Tensor, Tensor]:
    """Mean log-loss over each fold's held-out comparisons and mean-over-users accuracy,
    from the margins (F, N) each fold predicts."""
    weight = held_out.to(margins.dtype)
    loss = (F.softplus(-margins) * weight).sum(1) / weight.sum(1).clamp_min(1)
    per_user, total = user_hits(margins, data.user_index, data.n_users, weight)
    has = total > 0
    acc = (per_user / total.clamp_min(1) * has).sum(1) / has.sum(1).clamp_min(1)
    return loss.double(), acc.double()


def strengths(cfg: FitConfig, rank: int) -> tuple[float, ...]:
    """The personalisation strengths a cell scores: the grid when ``personalization`` is
    'auto' (rank 1 has one reward for everyone: 1 alone), else the given value."""
    if cfg.personalization != AUTO:
        return (float(cfg.personalization),)
    return (1.0,) if rank <= 1 else tuple(sorted(set(cfg.personalization_grid)))


def choose_strength(
    data: Comparisons, scores: HeldOut, scored: Tensor, grid: Sequence[float]
) -> tuple[float, dict[str, dict[str, float]]]:
    """The personalisation strength of one cell, and every strength's scores.

    Each strength's held-out log-loss is averaged per user; the chosen strength is the
    weakest whose mean over users is within one standard error of the best's, the error of
    the paired per-user difference: a user's own weights must beat the shared ones by more
    than the noise before they are used (strength 0 serves every user the shared reward)."""
    u, n_users = data.user_index, data.n_users
    rows = scored.any(0).to(torch.float64)  # each scored row is scored by one fold
    counts = torch.bincount(u, weights=rows, minlength=n_users)
    has = counts > 0
    per_user = {}
    table: dict[str, dict[str, float]] = {}
    for lam in grid:
        m = scores.at(lam)
        loss = torch.bincount(u, weights=F.softplus(-m).double() * rows, minlength=n_users)
        per_user[lam] = (loss / counts.clamp_min(1))[has]
        fold_loss, fold_acc = _fold_scores(data, m[None].expand(len(scored), -1), scored)
        table[f"{lam:g}"] = {
            "cv_loss": float(fold_loss.mean()),
            "cv_accuracy": float(fold_acc.mean()),
        }
    best = min(grid, key=lambda lam: float(per_user[lam].mean()))
    for lam in sorted(grid):
        diff = per_user[lam] - per_user[best]
        se = float(diff.std(unbiased=True)) / math.sqrt(diff.numel()) if diff.numel() > 1 else 0
        if float(diff.mean()) <= se:
            return lam, table
    return best, table


def _mean_se(x: Tensor) -> tuple[float, float]:
    se = float(x.std(unbiased=True)) / math.sqrt(x.numel()) if x.numel() > 1 else 0.0
    return float(x.mean()), se


def select_settings(
    data: Comparisons,
    sigma: Tensor,
    ranks: Sequence[int],
    weight_decays: Sequence[float],
    cfg: FitConfig,
    reference_head: Tensor | None = None,
    *,
    progress: bool = False,
) -> Selection:
    """Cross-validate every (rank, ridge) of the grids and pick one (see the module doc)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    n_folds = cfg.cv_folds
    fold = user_folds(data, n_folds, gen)
    holdout = cfg.cv_holdout if data.n_users >= n_folds else "comparisons"
    if holdout == "users":
        inner, fold = fold, held_out_users(data, n_folds, gen)
    held_out = torch.stack([fold == f for f in range(n_folds)])  # (F, N)
    train_weights, scored = (~held_out).to(torch.float32), held_out
    notes = []
    if holdout == "users" and cfg.cv_exclude_pairs:
        train_weights, scored, left_out = new_pair_split(data, held_out, gen)
        if left_out:
            notes.append(
                f"held-out users were scored on pairs of texts their fold never trained on: "
                f"{float(scored.sum()) / max(float(held_out.sum()), 1):.0%} of their "
                f"comparisons, leaving out {left_out:.0%} of the training rows"
            )
    scored_any = scored.any(0)
    ranks = sorted(set(int(k) for k in ranks))
    decays = sorted(set(float(w) for w in weight_decays))  # weak -> strong
    rows: list[dict] = []
    fitted: dict[int, tuple[Tensor, Tensor, FitConfig]] = {}  # id(row) -> its folds' fit
    n_fits = 0
    spaces = ("simplex", "signed") if cfg.weights == AUTO else (cfg.space,)
    jobs = [(w, k) for w in spaces for k in ranks if k > 1 or w == spaces[0]]
    bar = progress_bar(len(jobs) * len(decays), "selecting rank and ridge", progress)
    loose_tol = max(cfg.tol, LOOSE_TOL)
    memo = memo_for(data, sigma, cfg, reference_head)
    reuse = memo.shared and cfg.init != "random"  # a random start draws from gen: not reused
    reused_fits = 0
    # the folds' users' feature sums, kept for the next rank's start where they are small
    fold_sums = memo.fold_sums
    keep_sums = n_folds * data.n_users * data.d * 4 <= FOLD_SUMS_BYTES

    def fit_cell(
        basis0: Tensor,
        logits0: Tensor,
        decay: float,
        cell_cfg: FitConfig,
        tol: float,
        memory: LbfgsMemory | None = None,
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return solve_lbfgs(
                data,
                sigma,
                basis0,
                logits0,
                [decay] * n_folds,
                replace(cell_cfg, tol=tol),
                reference_head,
                train_weights,
                memory=memory,
                desc=f"cv rank {basis0.shape[2]}",
            )

    def score_cell(res, cell_cfg: FitConfig, with_std: bool = False) -> tuple[dict, HeldOut]:
        """The cell's held-out scores (the row's numbers) from its folds' fit."""
        rank = res.basis.shape[2]
        if holdout == "users":
            scores = _new_user_scores(
                data, sigma, res.basis, res.logits, held_out, inner, cell_cfg, with_std
            )
        else:
            scores = _held_out_scores(
                data, sigma, res.basis, res.logits, held_out, fold, cfg.scale, cell_cfg.space
            )
        strength, by_strength = choose_strength(data, scores, scored, strengths(cfg, rank))
        loss, acc = _fold_scores(data, scores.at(strength)[None].expand(n_folds, -1), scored)
        mean, se = _mean_se(loss)
        acc_mean, acc_se = _mean_se(acc)
        numbers = {
            "personalization": strength,
            "cv_loss": mean,
            "cv_loss_se": se,
            "cv_accuracy": acc_mean,
            "cv_accuracy_se": acc_se,
            "strengths": by_strength,
        }
        return numbers, scores

    def score_rank(space: str, rank: int) -> None:
        """Score the ridges of one rank in one weight space at the loose tolerance (appending
        rows): from PATH_BACK grid steps weaker than the previous rank's best ridge, and the
        weaker ridges too when the best of those is the first."""
        cell_cfg = replace(cfg, weights="signed" if space == "signed" and rank > 1 else "simplex")
        before = [r for r in rows if 1 < r["rank"] < rank and r["weights"] == space]
        before = before or [r for r in rows if r["rank"] < rank]
        start = decays[0]
        if before:
            last = [r for r in before if r["rank"] == max(b["rank"] for b in before)]
            ridges = sorted(r["weight_decay"] for r in last)
            best = min(last, key=lambda r: r["cv_loss"])["weight_decay"]
            start = min(ridges[max(ridges.index(best) - PATH_BACK, 0)], decays[-1])
        upper = walk(cell_cfg, rank, [w for w in decays if w >= start] or [start])
        lower = [w for w in decays if w < start]
        if lower and min(upper, key=lambda r: r["cv_loss"]) is upper[0]:
            walk(cell_cfg, rank, lower)  # the best sits at the path's weak end: go weaker

    def walk(cell_cfg: FitConfig, rank: int, path: list[float]) -> list[dict]:
        """One warm-started ridge path, weak to strong, from the folds' informed starts:
        stops once the loss has risen for two stronger ridges in a row, and goes on past the
        grid's strongest value while that one is the best. Returns its rows."""
        nonlocal n_fits, reused_fits
        key = (cell_cfg.space, rank, tuple(path))
        if reuse and key in memo.walks:  # the same walk in an earlier search: its rows again
            done, count = memo.walks[key]
            copies = []
            for loose, basis, logits, row_cfg in done:
                row = dict(loose)
                rows.append(row)
                copies.append(row)
                fitted[id(row)] = (basis, logits, row_cfg)
            reused_fits += count
            bar.update(len(copies))
            return copies
        starts = []
        for f in range(n_folds):
            rows_f = (train_weights[f] > 0).nonzero()[:, 0]
            sums = None
            if cfg.init != "random" and keep_sums:  # every rank's start reads the same sums
                if f not in fold_sums:
                    fold_sums[f] = user_feature_sums(data, rows_f)
                sums = fold_sums[f]
            spectra = memo.spectra.setdefault(f, {}) if sums is not None else None
            starts.append(
                initial_point(
                    data,
                    sigma,
                    rank,
                    cfg.init,
                    gen,
                    rows=rows_f,
                    space=cell_cfg.space,
                    sums=sums,
                    spectra=spectra,
                )
            )
        basis0 = torch.stack([b for b, _ in starts])
        logits0 = torch.stack([lg for _, lg in starts])
        rank_best, rising = math.inf, 0
        walked: list[dict] = []
        memory = None
        for decay in path:  # a list iterator also yields the values appended below
            res = fit_cell(basis0, logits0, decay, cell_cfg, loose_tol, memory)
            n_fits += n_folds
            # warm start (point and curvature pairs) for the next, stronger ridge
            basis0, logits0, memory = res.basis, res.logits, res.memory
            numbers, _ = score_cell(res, cell_cfg)
            row = {
                "rank": rank,
                "weight_decay": decay,
                "weights": cell_cfg.space,
                **numbers,
                "iterations": res.iterations,
                "converged": res.converged,
                "tol": loose_tol,
                "path_start": path[0],
            }
            rows.append(row)
            walked.append(row)
            fitted[id(row)] = (res.basis, res.logits, cell_cfg)
            bar.update(1)
            mean = row["cv_loss"]
            if mean < rank_best:
                rank_best, rising = mean, 0
                at_edge = decay == path[-1] and decay >= decays[-1] and len(decays) > 1
                if at_edge and len(path) - len([w for w in path if w <= decays[-1]]) < EDGE_STEPS:
                    path.append(float(f"{decay * decays[-1] / decays[-2]:.6g}"))  # best at the edge
                    bar.total = (bar.total or 0) + 1
            else:
                rising += 1
                if rising >= 2:  # stronger ridges only shrink more
                    break
        if reuse:
            memo.walks[key] = ([(dict(r), *fitted[id(r)]) for r in walked], n_folds * len(walked))
        return walked

    def refine(row: dict) -> float:
        """Continue a cell's folds to the search's tolerance and score it again; returns how
        much its loose score overstated its loss (negative: understated)."""
        basis, logits, cell_cfg = fitted[id(row)]
        key = (row["weights"], row["rank"], row["weight_decay"], row["path_start"])
        if reuse and key in memo.refined:
            numbers, basis, logits, iterations, converged = memo.refined[key]
        else:
            res = fit_cell(basis, logits, row["weight_decay"], cell_cfg, search_tol)
            numbers, _ = score_cell(res, cell_cfg)
            basis, logits, iterations, converged = (
                res.basis,
                res.logits,
                res.iterations,
                res.converged,
            )
            if reuse:
                memo.refined[key] = (numbers, basis, logits, iterations, converged)
        fitted[id(row)] = (basis, logits, cell_cfg)
        bias = row["cv_loss"] - numbers["cv_loss"]
        row.update(numbers)
        row.update(
            iterations=row["iterations"] + iterations,
            converged=converged,
            tol=search_tol,
            loose_cv_loss=row["cv_loss"] + bias,
        )
        return bias

    ranks_without_gain = 0
    for space, rank in jobs:
        if rows and rows[-1]["weights"] != space:  # a new weight space: its own rank stop
            ranks_without_gain = 0
        elif ranks_without_gain >= RANK_PATIENCE:
            continue
        earlier = min((r["cv_loss"] for r in rows if r["weights"] == space), default=math.inf)
        score_rank(space, rank)
        # a rank gains when its best loose loss beats every smaller rank's by MIN_GAIN
        now = min(r["cv_loss"] for r in rows if r["weights"] == space)
        ranks_without_gain = 0 if now < earlier - MIN_GAIN else ranks_without_gain + 1
    # refine the cells the choice can fall on, best loose score first, until no unrefined cell
    # could change the choice among the refined ones even if its loose score overstates its
    # loss twice as much as any refined cell's did (:func:`may_change_choice`)
    search_tol = max(cfg.tol, SEARCH_TOL)
    overstated = 0.0

    def settle(candidates: list[dict]) -> list[dict]:
        """Refine ``candidates`` until the choice among them is settled; returns the refined."""
        nonlocal overstated
        refined = [r for r in candidates if r["tol"] <= search_tol]
        while True:
            slack = max(REFINE_MARGIN, 2.0 * overstated)
            pending = (r for r in candidates if r["tol"] > search_tol)
            row = next(
                (
                    r
                    for r in sorted(pending, key=lambda r: r["cv_loss"])
                    if may_change_choice(r, refined, slack, cfg.one_se)
                ),
                None,
            )
            if row is None:
                return refined
            overstated = max(overstated, refine(row))
            refined.append(row)

    refined = settle(rows)
    chosen, rule = choose_cell(refined, cfg.one_se)
    zero = None
    # a given rank (no rank 1 in the grid) with the strength searched: whether personalising
    # pays at all is still the cross-validation's call, the pooled reward its simplest answer
    given_rank = not any(r["rank"] == 1 for r in rows) and cfg.personalization == AUTO
    if chosen["rank"] > 1 and (chosen["personalization"] == 0 or given_rank):
        # the pooled reward is the best rank-1 cell (scored now if the grid had no rank 1)
        if not any(r["rank"] == 1 for r in rows):
            score_rank("simplex", 1)
        pooled_row, _ = choose_cell(settle([r for r in rows if r["rank"] == 1]), cfg.one_se)
        band = chosen["cv_loss_se"] if cfg.one_se else 0.0
        at = f"at rank {chosen['rank']} (ridge {chosen['weight_decay']:g})"
        pooled_at = f"the pooled reward (rank 1, ridge {pooled_row['weight_decay']:g})"
        if chosen["personalization"] == 0:
            notes.append(
                f"{at} the cross-validation found no personalisation strength above 0 that "
                f"beats the shared weights: the model is {pooled_at}"
            )
        elif pooled_row["cv_loss"] <= chosen["cv_loss"] + band:
            # rank 1 was not in the one-standard-error rule: apply it here, so a given rank
            # the data does not support serves the pooled reward, as rank='auto' would
            notes.append(
                f"{at} the cross-validated log-loss {chosen['cv_loss']:.4f} "
                f"(± {chosen['cv_loss_se']:.4f}) does not beat {pooled_at}'s "
                f"{pooled_row['cv_loss']:.4f} by one standard error: the model is the pooled "
                "reward"
            )
        else:
            pooled_row = chosen
        if pooled_row is not chosen:
            zero = {
                "rank": chosen["rank"],
                "weight_decay": chosen["weight_decay"],
                "reason": "strength" if chosen["personalization"] == 0 else "pooled",
            }
            chosen = pooled_row
    if holdout == "users" and cfg.calibrate:  # the chosen cell's scale (only it is used)
        basis, logits, cell_cfg = fitted[id(chosen)]
        _, scores = score_cell(LbfgsResult(basis, logits, 0, True, []), cell_cfg, True)
        lam = chosen["personalization"]
        chosen["margin_scale"] = fit_margin_scale(
            scores.at(lam)[scored_any], lam * scores.std[scored_any]
        )
    not_converged = sum(not r["converged"] for r in rows)
    bar.close()
    for r in rows:
        r["chosen"] = r is chosen
    pooled_rows = [r for r in rows if r["rank"] == 1]
    pooled = min(pooled_rows, key=lambda r: r["cv_loss"]) if pooled_rows else None
    if holdout != cfg.cv_holdout:
        notes.append(
            f"{data.n_users} users are fewer than the {n_folds} folds: each fold held out a share "
            "of every user's comparisons instead of whole users"
        )
    if not_converged:
        notes.append(
            f"{not_converged} of the cross-validation cells stopped on the iteration cap "
            f"(n_iter = {cfg.n_iter})"
        )
        warnings.warn(
            f"model selection: {notes[-1]}; their scores may be pessimistic",
            ConvergenceWarning,
            stacklevel=3,
        )
    return Selection(
        rank=chosen["rank"],
        weight_decay=chosen["weight_decay"],
        weights=chosen["weights"],
        rows=rows,
        rule=rule,
        folds=n_folds,
        n_fits=n_fits,
        reused_fits=reused_fits,
        seconds=round(time.perf_counter() - t0, 3),
        refined=sum("loose_cv_loss" in r for r in rows),
        path_start=chosen["path_start"] if chosen["path_start"] > decays[0] else None,
        pooled=pooled,
        notes=notes,
        holdout=holdout,
        zero_personalization=zero,
    )


def _simplicity(row: dict) -> tuple:
    """The one-standard-error rule's order: lowest rank, simplex before signed, strongest
    ridge."""
    return (row["rank"], row["weights"] != "simplex", -row["weight_decay"])


def may_change_choice(row: dict, refined: list[dict], slack: float, one_se: bool) -> bool:
    """Whether an unrefined cell, whose refined loss may be as low as its loose loss less
    ``slack``, could change :func:`choose_cell`'s choice among the ``refined`` cells.

    A simpler cell than the chosen one changes it by entering the band (the best loss plus
    its standard error); a more complex one only by becoming the best with a band that
    leaves the chosen cell out."""
    if not refined:
        return True
    chosen, _ = choose_cell(refined, one_se)
    best = min(refined, key=lambda r: r["cv_loss"])
    lowest = row["cv_loss"] - slack
    if not one_se:
        return lowest < best["cv_loss"]
    if _simplicity(row) < _simplicity(chosen):
        return lowest <= best["cv_loss"] + best["cv_loss_se"]
    return lowest < best["cv_loss"] and lowest + row["cv_loss_se"] < chosen["cv_loss"]


def choose_cell(rows: list[dict], one_se: bool) -> tuple[dict, str]:
    """The chosen cell and the rule's name: the simplest (lowest rank, simplex before signed,
    strongest ridge) within one standard error of the best, or the best."""
    best = min(rows, key=lambda r: r["cv_loss"])
    if not one_se:
        return best, "minimum"
    limit = best["cv_loss"] + best["cv_loss_se"]
    chosen = min((r for r in rows if r["cv_loss"] <= limit), key=_simplicity)
    return chosen, "one standard error"


def signal_problems(selection: Selection) -> list[str]:
    """Why the chosen model may have learned nothing (empty when it learned something)."""
    chosen = selection.chosen
    problems = []
    margin = max(chosen["cv_loss_se"], MIN_GAIN)
    cell = f"at rank {chosen['rank']}, weight_decay {chosen['weight_decay']:g}, "
    if chosen["cv_loss"] >= LN2 - margin:
        problems.append(
            f"{cell}its cross-validated log-loss {chosen['cv_loss']:.4f} is not below ln 2 = "
            f"{LN2:.4f} (a coin flip) by more than {margin:.4f} (its standard error, at least "
            f"{MIN_GAIN})"
        )
    pooled = selection.pooled
    if pooled is not None and chosen["rank"] > 1 and chosen["cv_accuracy"] <= pooled["cv_accuracy"]:
        problems.append(
            f"{cell}its cross-validated accuracy {chosen['cv_accuracy']:.4f} is not above the "
            f"pooled rank-1 model's {pooled['cv_accuracy']:.4f}"
        )
    return problems
