"""What a fit records about itself: ``LowRankReward.history_``.

A plain dict at run time (it is written as it is to ``training.json`` and read by the model
card), typed here so that every key the package writes or reads is named once. Every key is
optional: a model built from arrays has an empty history, a rank-0 model no loss.
"""

from __future__ import annotations

from typing import Any, TypedDict


class FitHistory(TypedDict, total=False):
    """The keys of ``LowRankReward.history_`` (each optional)."""

    #: the joint fit: final loss (L-BFGS) or one loss per iteration (the published Adam loop)
    loss: float | list[float]
    iterations: int
    #: L-BFGS iterations of each step of the warm-started ridge path, and its ridge values
    path_iterations: list[int]
    ridge_path: list[float]
    converged: bool
    init: str
    #: basis columns dropped by ``prune_threshold``
    pruned_columns: int
    #: the seen users' shrinkage toward the population (:mod:`lore_rm.fit.hierarchy`)
    hierarchy: dict[str, Any]
    #: whether an 'auto' setting was chosen by cross-validation, and the search's curve
    validated: bool
    selection: dict[str, Any]
    #: why the chosen model may have learned nothing (:class:`NoSignalWarning`)
    no_signal: list[str]
    #: the margin scale and where it came from (:mod:`lore_rm.fit.calibration`)
    calibration: dict[str, Any]
    #: the few-shot prior: kind, strength or what was learned, and why
    prior: dict[str, Any]
    #: torch's thread count during the fit, and whether MKL's products were in their
    #: thread-count-independent mode (None: no MKL; :mod:`lore_rm.reproducible_blas`)
    threads: dict[str, Any]
    #: set by ``lore fit``: the personalisation report and the population's summary
    personalization: dict[str, Any]
    population: dict[str, Any]
