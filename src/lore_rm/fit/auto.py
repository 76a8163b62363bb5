"""Resolving ``rank="auto"`` / ``weight_decay="auto"`` and saying when a fit learned nothing."""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.errors import LoreError, NoSignalWarning
from lore_rm.fit.config import AUTO, FitConfig
from lore_rm.fit.history import FitHistory
from lore_rm.fit.selection import Selection, select_settings, signal_problems
from lore_rm.fit.solvers import feature_scale

Tensor = torch.Tensor


def resolve_auto(
    data: Comparisons,
    rank: int | str,
    cfg: FitConfig,
    reference_head: Tensor | None = None,
    *,
    progress: bool = False,
    sigma: Tensor | None = None,
) -> tuple[int, FitConfig, Selection | None]:
    """The rank and config to fit with; runs the cross-validated search when either is auto.

    With ``rank="auto"`` the grid includes rank 1, so the chosen model is also checked against
    the pooled reward; with an explicit rank only the coin-flip check applies. ``sigma`` is
    :func:`feature_scale` of ``data`` where the caller already has it.
    """
    auto_rank = rank == AUTO
    if not auto_rank and not cfg.auto_weight_decay and cfg.weights != AUTO:
        return int(rank), cfg, None
    if not auto_rank and int(rank) == 0:  # the reference head: nothing to fit
        return 0, replace(cfg, weight_decay=0.0), None
    if cfg.solver != "lbfgs":
        raise LoreError(
            "rank='auto' and weight_decay='auto' need solver='lbfgs' (the default recipe); "
            "give explicit values with the paper recipe"
        )
    decays = cfg.weight_decay_grid if cfg.auto_weight_decay else (float(cfg.weight_decay),)
    ranks = [k for k in cfg.rank_grid if k <= data.d] if auto_rank else [int(rank)]
    if not ranks:
        raise LoreError(f"rank_grid {cfg.rank_grid} has no rank <= d = {data.d}")
    sigma = feature_scale(data, cfg.standardize) if sigma is None else sigma
    selection = select_settings(data, sigma, ranks, decays, cfg, reference_head, progress=progress)
    chosen = replace(
        cfg,
        weight_decay=selection.weight_decay,
        weights=selection.weights,
        ridge_path_start=selection.path_start,
    )
    return selection.rank, chosen, selection


def diagnose(selection: Selection | None) -> FitHistory:
    """History entries for a fit (and a :class:`NoSignalWarning` when it learned nothing)."""
    if selection is None:
        return {"validated": False}
    problems = signal_problems(selection)
    if problems:
        warnings.warn(
            "the fitted model may have learned nothing: " + "; ".join(problems) + ". Check the "
            "labels and the embeddings, or gather more comparisons per user.",
            NoSignalWarning,
            stacklevel=3,
        )
    return {"validated": True, "selection": selection.to_dict(), "no_signal": problems}


def chosen_strength(selection: Selection | None, cfg: FitConfig, rank: int) -> float:
    """The model's personalisation strength: the chosen cell's, the configured number, or 1
    where nothing was searched (rank 1 and below: 1, nothing to personalise)."""
    if cfg.personalization != AUTO:
        return float(cfg.personalization)
    if selection is None or rank <= 1:
        return 1.0
    return float(selection.chosen.get("personalization", 1.0))


def margin_calibration(selection: Selection | None, calibrate: bool, rank: int) -> dict:
    """The fitted model's margin scale and where it came from (``history_["calibration"]``):
    the chosen cell's, when the search held out users; else 1 and why not."""
    if rank == 0:
        why = "rank 0 is the reference head, which is not fitted"
    elif not calibrate:
        why = "calibrate is off"
    elif selection is None:
        why = "no cross-validated search ran (rank and weight_decay were both given)"
    elif selection.holdout != "users":
        why = "the cross-validation held out comparisons, not users"
    else:
        return {
            "margin_scale": float(selection.chosen["margin_scale"]),
            "source": f"{selection.folds}-fold cross-validation, users held out",
        }
    return {"margin_scale": 1.0, "why": why}
