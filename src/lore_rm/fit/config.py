"""Fit settings: one dataclass, two recipes (the published one and lore-rm's default)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from lore_rm.errors import LoreError

Recipe = Literal["default", "paper"]


@dataclass(frozen=True)
class FitConfig:
    """Every knob of the joint and few-shot fits. Build with :meth:`for_recipe`.

    recipe: ``"paper"`` reproduces the published LoRe recipe; ``"default"`` is lore-rm's.
    scale: the fixed scale ``s`` in ``P = sigmoid(s * x V w)`` (paper 0.01; default 1.0, on
        standardised features).
    standardize: divide each feature dimension by its RMS over the training comparisons
        before fitting (folded back into the stored basis, so rewards stay in raw units).
    solver: ``"adam-alternating"`` (paper: one Adam step on W then one on V per iteration)
        or ``"lbfgs"`` (joint L-BFGS on V and W).
    n_iter: iterations (paper 1000; default: the cap on L-BFGS iterations).
    lr: learning rate (Adam) or step size (L-BFGS).
    alpha: weight of the penalty tying basis columns to the reference head.
    regularizer: ``"cosine"`` (alpha * mean_k(1 - cos(V_k, v_ref))) or ``"l2"``
        (alpha * sum_k ||V_k - v_ref||^2).
    warmup: fractions of n_iter where the alpha ramp starts and ends (paper 0.2, 0.8).
    weight_decay: L2 penalty (weight_decay / 2) * ||V||^2 on the basis in the fitted units.
    user_l2: L2 penalty on user logits (keeps weights off the simplex's corners).
    validation_fraction: share of the seen users' training comparisons held out for early
        stopping (0 = no early stopping).
    patience: early-stopping checks without improvement before stopping.
    prune_threshold: after fitting, drop basis columns whose largest user weight is below
        this (kept weights are not renormalised, as published); None keeps every column.
    fewshot_solver / fewshot_n_iter / fewshot_lr: the new-user fit.
    fewshot_prior: strength of a Gaussian prior on a new user's logits centred on the seen
        population's mean weights (0 = none, the published fit).
    seed: seeds every random draw of the fit.
    """

    recipe: Recipe = "default"
    scale: float = 1.0
    standardize: bool = True
    solver: Literal["adam-alternating", "lbfgs"] = "lbfgs"
    n_iter: int = 500
    lr: float = 1.0
    alpha: float = 0.0
    regularizer: Literal["cosine", "l2"] = "cosine"
    warmup: tuple[float, float] = (0.2, 0.8)
    weight_decay: float = 1e-2
    user_l2: float = 1e-3
    validation_fraction: float = 0.1
    patience: int = 5
    prune_threshold: float | None = None
    fewshot_solver: Literal["adam", "lbfgs"] = "lbfgs"
    fewshot_n_iter: int = 100
    fewshot_lr: float = 1.0
    fewshot_prior: float = 0.3
    seed: int = 0

    @classmethod
    def for_recipe(cls, recipe: Recipe = "default", **overrides) -> FitConfig:
        if recipe == "paper":
            base = cls(
                recipe="paper",
                scale=0.01,
                standardize=False,
                solver="adam-alternating",
                n_iter=1000,
                lr=0.5,
                weight_decay=0.0,
                user_l2=0.0,
                validation_fraction=0.0,
                prune_threshold=0.01,
                fewshot_solver="adam",
                fewshot_n_iter=500,
                fewshot_lr=0.1,
                fewshot_prior=0.0,
            )
        elif recipe == "default":
            base = cls()
        else:
            raise LoreError(f"unknown recipe {recipe!r}: choose 'default' or 'paper'")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LoreError(f"unknown fit setting(s): {', '.join(unknown)}")
        if "warmup" in overrides:
            overrides["warmup"] = tuple(overrides["warmup"])
        cfg = replace(base, **overrides)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.scale <= 0:
            raise LoreError(f"scale must be > 0, got {self.scale}")
        if self.n_iter < 0 or self.fewshot_n_iter < 0:
            raise LoreError("n_iter and fewshot_n_iter must be >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise LoreError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        lo, hi = self.warmup
        if not 0.0 <= lo <= hi <= 1.0:
            raise LoreError(f"warmup must satisfy 0 <= start <= end <= 1, got {self.warmup}")
        if self.regularizer not in ("cosine", "l2"):
            raise LoreError(f"regularizer must be 'cosine' or 'l2', got {self.regularizer!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["warmup"] = list(self.warmup)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "warmup" in kw:
            kw["warmup"] = tuple(kw["warmup"])
        return cls(**kw)
