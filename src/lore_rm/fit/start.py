"""Deterministic, informed starting points for the joint fit.

The fit's objective is not convex (``x V w`` is bilinear) and has a symmetric saddle where
every basis column is the same direction and every user has uniform weights: a start near it
(small random columns, a strong ridge, or a warm start from a strongly regularised solution)
lets L-BFGS stop there, which is the pooled rank-1 model. Starting from the data's own
directions avoids it and makes the fit deterministic (no random draw at all).
"""

from __future__ import annotations

import math

import torch

from lore_rm.comparisons import Comparisons, DifferenceRows
from lore_rm.errors import LoreError
from lore_rm.fit.config import INITS
from lore_rm.threads import one_thread

Tensor = torch.Tensor

_CHUNK = 8192
MIN_SPREAD = 0.1


def user_feature_sums(data: Comparisons, rows: Tensor | None = None) -> Tensor:
    """(U, d): each user's summed feature rows ``sum x`` (over ``rows`` only, if given)."""
    sums = torch.zeros(data.n_users, data.d, dtype=torch.float32, device=data.device)
    index = torch.arange(data.n, device=data.device) if rows is None else rows
    table, chosen, rejected = data.table, data.chosen, data.rejected
    if table is None or chosen is None or rejected is None or table.dtype != torch.float32:
        for start in range(0, index.numel(), _CHUNK):  # bounded memory: O(chunk * d)
            sub = data.subset(index[start : start + _CHUNK])
            sums.index_add_(0, sub.user_index, sub.feature_rows(0, sub.n))
        return sums
    diff = DifferenceRows(table, min(_CHUNK, index.numel()))  # the same rows, reused buffers
    for start in range(0, index.numel(), _CHUNK):
        part = index[start : start + _CHUNK]
        sums.index_add_(0, data.user_index[part], diff(chosen[part], rejected[part]))
    return sums


def _top_right_singular(m: Tensor, k: int, cache: dict | None = None, key: str = "") -> Tensor:
    """(d, k) top right singular vectors of ``m`` (U, d), deterministic signs. ``cache`` keeps
    the Gram matrix's eigendecomposition under ``key`` for a later call on the same ``m``
    (another rank's start on the same fold): the same vectors, one decomposition."""
    if k == 0:
        return m.new_zeros(m.shape[1], 0)
    gram_small = m.shape[0] <= m.shape[1]
    if cache is not None and key in cache:
        vals, vecs = cache[key]
    else:
        g = (m @ m.T) if gram_small else (m.T @ m)
        vals, vecs = torch.linalg.eigh(g.double())
        if cache is not None:
            cache[key] = (vals, vecs)
    vecs = vecs[:, torch.argsort(vals, descending=True)[:k]]
    top = (m.double().T @ vecs) if gram_small else vecs
    total = float(vals.clamp_min(0).sum())
    keep = vals.sort(descending=True).values[:k] > max(1e-9 * total, 1e-30)
    top = top[:, keep.to(top.device)]
    top = top / top.norm(dim=0).clamp_min(1e-30)
    signs = torch.sign(top[top.abs().argmax(dim=0), torch.arange(top.shape[1])])
    return (top * signs).to(m.dtype)


def _complete(directions: Tensor, unit: Tensor, k: int) -> Tensor:
    """``k`` orthonormal directions orthogonal to ``unit``: ``directions`` first, then axes
    (when there are fewer users than directions asked for)."""
    if directions.shape[1] >= k:
        return directions[:, :k]
    d = unit.numel()
    axes = torch.eye(d, dtype=directions.dtype, device=directions.device)
    q, _ = torch.linalg.qr(torch.cat([unit[:, None], directions, axes], dim=1).double())
    return q[:, 1 : 1 + k].to(directions.dtype)


def initial_point(
    data: Comparisons,
    sigma: Tensor,
    rank: int,
    kind: str = "spectral",
    generator: torch.Generator | None = None,
    rows: Tensor | None = None,
    space: str = "simplex",
    sums: Tensor | None = None,
    spectra: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """Basis (d, K) in standardised units and user logits (U, K) to start the joint fit from.

    * ``"spectral"``: the pooled direction (sum of every standardised feature row) plus the
      top K-1 directions in which users' mean feature rows differ from each other, arranged
      as a regular simplex around the pooled direction, every user at its centre.
    * ``"svd"``: the top-K right singular vectors of the users' summed feature rows (PReF's
      start), signed so the pooled sum projects positively.
    * ``"random"``: ``V ~ N(0, 1/d)``, logits ``N(0, 0.01^2)`` from ``generator``.

    ``rows`` restricts the data the start looks at (a cross-validation fold's training rows);
    ``sums`` is :func:`user_feature_sums` of those rows where the caller already has it;
    ``spectra``, a dict kept per ``rows`` (and ``sums``), keeps the decomposition the start
    needs for the next rank's start on the same rows.
    ``space="signed"`` returns the users' offsets from the first unit vector, all 0, and
    (spectral) the pooled direction as the first column with the users' spread
    directions after it, so every user starts on the pooled reward.
    """
    if kind not in INITS:
        raise LoreError(f"init must be one of {', '.join(INITS)}; got {kind!r}")
    if kind != "random" and sums is None:
        sums = user_feature_sums(data, rows)
    # the Gram matrices, eigendecompositions and QRs on one thread: threads split their sums
    # and the start would differ in its last bits with the thread count (docs/recipes.md)
    with one_thread(sigma.device):
        basis, logits = _initial_point(
            data, sigma, rank, kind, generator, rows, space, sums, spectra
        )
    if space == "signed":  # offsets from the first unit vector (lore_rm.fit.link)
        logits = torch.zeros_like(logits)
    return basis, logits


def _initial_point(
    data, sigma, rank, kind, generator, rows, space, sums=None, spectra=None
) -> tuple[Tensor, Tensor]:
    d, n_users = data.d, data.n_users
    device = data.device
    if kind not in INITS:
        raise LoreError(f"init must be one of {', '.join(INITS)}; got {kind!r}")
    if kind == "random":
        gen = generator or torch.Generator().manual_seed(0)
        basis = torch.randn(d, rank, generator=gen) / math.sqrt(d)
        logits = 0.01 * torch.randn(n_users, rank, generator=gen)
        return basis.to(device), logits.to(device)
    sums = (user_feature_sums(data, rows) if sums is None else sums) / sigma[None, :]
    logits = torch.zeros(n_users, rank, device=device)
    pooled = sums.sum(0)
    if float(pooled.norm()) == 0.0:
        pooled = torch.ones(d, device=device)
    if kind == "svd":
        basis = _top_right_singular(sums, rank, spectra, "sums")
        if basis.shape[1] < rank:  # fewer users than columns: complete with axes
            eye = torch.eye(d, dtype=torch.float64, device=device)
            basis = torch.linalg.qr(torch.cat([basis.double(), eye], 1))[0][:, :rank].float()
        sign = torch.sign(pooled @ basis)
        return basis * torch.where(sign == 0, 1.0, sign), logits
    unit = pooled / pooled.norm()
    if rank == 1:
        return unit[:, None].clone(), logits
    index = data.user_index if rows is None else data.user_index[rows]
    counts = torch.bincount(index, minlength=n_users).clamp_min(1).to(sums.dtype)
    means = sums / counts[:, None]
    spread = means - means.mean(0)
    spread = spread - (spread @ unit)[:, None] * unit[None, :]
    top = _top_right_singular(spread, rank - 1, spectra, "spread")
    directions = _complete(top, unit, rank - 1)  # (d, K-1)
    coords = spread @ directions  # users' positions in those directions
    pooled_mean = float(pooled.norm()) / float(counts.sum())
    radius = float(coords.norm(dim=1).quantile(0.9)) / max(pooled_mean, 1e-12)
    radius = max(radius, MIN_SPREAD)  # distinct columns even when users do not spread
    centred = torch.eye(rank, dtype=torch.float64) - 1.0 / rank  # K simplex vertices
    q, _ = torch.linalg.qr(centred.T)
    vertices = centred @ q[:, : rank - 1]
    if space == "signed":
        return torch.cat([unit[:, None], radius * directions], dim=1), logits
    vertices = (vertices / vertices.norm(dim=1, keepdim=True)).to(sums.dtype).to(device)
    basis = unit[:, None] + radius * directions @ vertices.T
    return basis, logits
