"""Fit settings: one dataclass, two recipes (the published one and lore-rm's default).

Every field carries its own help text (``field(metadata={"help": ...})``): the command-line
options of ``lore fit``, ``lore evaluate`` and ``lore demo`` are generated from it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Literal

from lore_rm.errors import LoreError

Recipe = Literal["default", "paper"]
Weights = Literal["simplex", "signed", "auto"]
AUTO = "auto"
LEARNED = "learned"
#: the isotropic prior strength used where a learned prior cannot be (K = 1, one user)
FALLBACK_PRIOR = 0.3
SOLVERS = ("adam-alternating", "lbfgs")
FEWSHOT_SOLVERS = ("adam", "lbfgs")
REGULARIZERS = ("cosine", "l2")
INITS = ("spectral", "svd", "random")
CV_HOLDOUTS = ("users", "comparisons")
WEIGHTS = ("simplex", "signed", "auto")
TUPLE_FIELDS = ("warmup", "weight_decay_grid", "rank_grid", "personalization_grid")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list | tuple):
        return field(default=tuple(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class FitConfig:
    """Every knob of the joint and few-shot fits. Build with :meth:`for_recipe`.

    The field help texts below are the documentation (``FitConfig.help(name)``).
    """

    recipe: Recipe = _f("default", "'default' (lore-rm's) or 'paper' (the published recipe).")
    scale: float = _f(
        1.0,
        "Fixed scale s in P = sigmoid(s * x V w) (paper 0.01; default 1 on standardised features).",
    )
    standardize: bool = _f(
        True,
        "Divide each feature dimension by its RMS before fitting (folded back into the basis).",
    )
    solver: Literal["adam-alternating", "lbfgs"] = _f(
        "lbfgs",
        "'lbfgs' (joint, to convergence) or 'adam-alternating' (the published loop).",
        choices=SOLVERS,
    )
    weights: Weights = _f(
        "simplex",
        "Users' weights: 'simplex' (LoRe's: a point of the probability simplex over the basis "
        "columns), 'signed' (the population's mean weights plus a signed offset per user, so "
        "a user can want the opposite of a column) or 'auto' (chosen by the cross-validation).",
        choices=WEIGHTS,
    )
    init: Literal["spectral", "svd", "random"] = _f(
        "spectral",
        "Start of the L-BFGS fit: 'spectral' (pooled direction + users' top spread directions), "
        "'svd' (top singular vectors of the users' summed features) or 'random'.",
        choices=INITS,
    )
    n_iter: int = _f(1000, "Iteration cap (paper: exactly 1000 Adam steps).")
    tol: float = _f(1e-5, "L-BFGS stops when the largest gradient entry is below this.")
    lr: float = _f(1.0, "Learning rate (Adam) or step size (L-BFGS).")
    alpha: float = _f(0.0, "Weight of the penalty tying basis columns to the reference head.")
    regularizer: Literal["cosine", "l2"] = _f(
        "cosine",
        "'cosine' (alpha * mean_k(1 - cos(V_k, v_ref))) or 'l2' (alpha * sum ||V_k - v_ref||^2).",
        choices=REGULARIZERS,
    )
    warmup: tuple[float, float] = _f(
        (0.2, 0.8), "Fractions of n_iter where the alpha ramp starts and ends (Adam solver)."
    )
    weight_decay: float | str = _f(
        AUTO,
        "Ridge (weight_decay/2) * ||V||^2 on the standardised basis; 'auto' chooses it by "
        "cross-validation over weight_decay_grid.",
    )
    weight_decay_grid: tuple[float, ...] = _f(
        (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), "Ridge values tried by weight_decay='auto'."
    )
    ridge_path: bool = _f(
        True,
        "Reach the ridge by a warm-started path through the weaker weight_decay_grid values, "
        "as the cross-validation scores it (a cold start at a strong ridge can stop at the "
        "pooled saddle); false starts at the ridge directly.",
    )
    rank_grid: tuple[int, ...] = _f((1, 2, 3, 4, 6, 8), "Ranks tried by rank='auto'.")
    cv_folds: int = _f(5, "Cross-validation folds for the 'auto' settings (see cv_holdout).")
    cv_holdout: Literal["users", "comparisons"] = _f(
        "users",
        "What a cross-validation fold holds out: 'users' (whole users; the fold's basis is scored "
        "on them after fitting their weights on part of their comparisons, as for new users) or "
        "'comparisons' (a share of every user's comparisons).",
        choices=CV_HOLDOUTS,
    )
    cv_exclude_pairs: bool = _f(
        True,
        "With users held out, score them only on pairs of texts their fold never trained on, "
        "as new users meet new prompts: every pair is dealt to a fold, and a held-out row "
        "whose pair other users labelled is scored (its pair's training rows left out) only "
        "in the pair's own fold (dense features name no texts: every held-out row is scored).",
    )
    one_se: bool = _f(
        True,
        "Pick the simplest setting (lower rank, then stronger ridge) whose cross-validated "
        "log-loss is within one standard error of the best.",
    )
    calibrate: bool = _f(
        True,
        "Multiply the fitted model's margins (rewards, probabilities, their std) by the scale at "
        "which the cross-validation's held-out users find them calibrated (learned when an "
        "'auto' setting is searched with cv_holdout='users'; otherwise, or when false, 1).",
    )
    hierarchical: bool = _f(
        True,
        "Fit the seen users' weights under the population prior learned from them (empirical "
        "Bayes, alternating with the basis), as new users' are: users with few comparisons are "
        "pulled toward the population as far as their data says; false leaves them free "
        "(only user_l2).",
    )
    personalization: float | str = _f(
        AUTO,
        "How far users move from the shared weights toward their own, in [0, 1]: "
        "w_bar + strength * (w_u - w_bar) (0 = every user gets the shared reward); 'auto' "
        "takes the weakest of personalization_grid within one standard error of the best "
        "cross-validated loss (1 when nothing is searched).",
    )
    personalization_grid: tuple[float, ...] = _f(
        (0.0, 0.25, 0.5, 0.75, 1.0), "Strengths tried by personalization='auto'."
    )
    user_l2: float = _f(
        1e-3, "L2 penalty on user logits (keeps weights off the simplex's corners)."
    )
    validation_fraction: float = _f(
        0.0,
        "Optional early-stopping guard: share of training comparisons held out; the fit stops "
        "after `patience` checks (every 25 iterations) without held-out improvement (0 = off).",
    )
    patience: int = _f(5, "Checks without held-out improvement before the guard stops.")
    prune_threshold: float | None = _f(
        None, "After fitting, drop basis columns whose largest user weight is below this."
    )
    fewshot_solver: Literal["adam", "lbfgs"] = _f(
        "lbfgs",
        "New-user fit: 'lbfgs' (MAP, all users at once) or 'adam' (published).",
        choices=FEWSHOT_SOLVERS,
    )
    fewshot_n_iter: int = _f(100, "Iterations of the new-user fit.")
    fewshot_lr: float = _f(1.0, "Learning rate / step size of the new-user fit.")
    fewshot_prior: float | str = _f(
        LEARNED,
        "Prior on a new user's logits: 'learned' (a mean and covariance learned from the seen "
        "users, empirical Bayes) or a number (the strength of an isotropic Gaussian around "
        "the population's mean weights).",
    )
    seed: int = _f(0, "Seeds every random draw of the fit.")

    @classmethod
    def for_recipe(cls, recipe: Recipe = "default", **overrides) -> FitConfig:
        if recipe == "paper":
            base = cls(
                recipe="paper",
                scale=0.01,
                standardize=False,
                solver="adam-alternating",
                init="random",
                n_iter=1000,
                lr=0.5,
                weight_decay=0.0,
                user_l2=0.0,
                prune_threshold=0.01,
                fewshot_solver="adam",
                fewshot_n_iter=500,
                fewshot_lr=0.1,
                fewshot_prior=0.0,
                calibrate=False,
                hierarchical=False,
                personalization=1.0,
            )
        elif recipe == "default":
            base = cls()
        else:
            raise LoreError(f"unknown recipe {recipe!r}: choose 'default' or 'paper'")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LoreError(f"unknown fit setting(s): {', '.join(unknown)}")
        for name in TUPLE_FIELDS:
            if name in overrides and overrides[name] is not None:
                overrides[name] = tuple(overrides[name])
        cfg = replace(base, **overrides)
        cfg.validate()
        return cfg

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)

    @property
    def auto_weight_decay(self) -> bool:
        return self.weight_decay == AUTO

    @property
    def space(self) -> Literal["simplex", "signed"]:
        """The users' weight space to fit in ('auto' is resolved by the search; before that,
        and for the paper recipe, 'simplex')."""
        return "signed" if self.weights == "signed" else "simplex"

    def validate(self) -> None:
        """Raise :class:`LoreError` naming the first field whose value cannot work."""

        def positive(name: str, strict: bool = True) -> None:
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (strict and v == 0):
                raise LoreError(
                    f"{name} must be a {'positive' if strict else 'non-negative'} number, got {v!r}"
                )

        for name, choices in (
            ("solver", SOLVERS),
            ("fewshot_solver", FEWSHOT_SOLVERS),
            ("regularizer", REGULARIZERS),
            ("init", INITS),
            ("cv_holdout", CV_HOLDOUTS),
            ("weights", WEIGHTS),
            ("recipe", ("default", "paper")),
        ):
            if getattr(self, name) not in choices:
                raise LoreError(
                    f"{name} must be one of {', '.join(map(repr, choices))}, "
                    f"got {getattr(self, name)!r}"
                )
        for name in ("scale", "lr", "fewshot_lr", "tol"):
            positive(name)
        for name in ("alpha", "user_l2"):
            positive(name, strict=False)
        prior = self.fewshot_prior
        if prior != LEARNED and not (
            isinstance(prior, int | float)
            and not isinstance(prior, bool)
            and math.isfinite(prior)
            and prior >= 0
        ):
            raise LoreError(
                f"fewshot_prior must be 'learned' or a non-negative number, got {prior!r}"
            )
        for name in ("n_iter", "fewshot_n_iter", "patience", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise LoreError(f"{name} must be a non-negative integer, got {v!r}")
        if self.weight_decay != AUTO:
            positive("weight_decay", strict=False)
        if not self.weight_decay_grid or any(
            not isinstance(v, int | float) or not math.isfinite(v) or v < 0
            for v in self.weight_decay_grid
        ):
            raise LoreError(
                f"weight_decay_grid must be non-negative numbers, got {self.weight_decay_grid!r}"
            )
        lam = self.personalization
        if lam != AUTO and not (
            isinstance(lam, int | float) and not isinstance(lam, bool) and 0.0 <= lam <= 1.0
        ):
            raise LoreError(f"personalization must be 'auto' or a number in [0, 1], got {lam!r}")
        if not self.personalization_grid or any(
            not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= v <= 1.0
            for v in self.personalization_grid
        ):
            raise LoreError(
                f"personalization_grid must be numbers in [0, 1], got {self.personalization_grid!r}"
            )
        if not self.rank_grid or any(
            not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in self.rank_grid
        ):
            raise LoreError(f"rank_grid must be positive integers, got {self.rank_grid!r}")
        if not isinstance(self.cv_folds, int) or self.cv_folds < 2:
            raise LoreError(f"cv_folds must be an integer >= 2, got {self.cv_folds!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise LoreError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.prune_threshold is not None:
            positive("prune_threshold", strict=False)
        if len(self.warmup) != 2:
            raise LoreError(f"warmup must be two fractions (start, end), got {self.warmup!r}")
        lo, hi = self.warmup
        if not 0.0 <= lo <= hi <= 1.0:
            raise LoreError(f"warmup must satisfy 0 <= start <= end <= 1, got {self.warmup}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for name in TUPLE_FIELDS:
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


def field_default(name: str) -> Any:
    f = next(f for f in fields(FitConfig) if f.name == name)
    return f.default if f.default is not MISSING else None
