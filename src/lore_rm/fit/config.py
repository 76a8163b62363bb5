"""Fit settings: one dataclass, two recipes (the published one and lore-rm's default).

Every field carries its help text and its rule (``field(metadata={"help": ..., "rule":
...})``, :mod:`lore_rm.constraints`): :meth:`FitConfig.validate` checks the rules, and the
command-line options of ``lore fit``, ``lore evaluate`` and ``lore demo`` are generated from
both (:mod:`lore_rm.cli.fit_options`). The vocabularies are the ``Literal`` types below.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from lore_rm.constraints import Flag, Interval, Several, Word, check, choices_of, rule_of
from lore_rm.errors import LoreError
from lore_rm.fit.link import WeightSpace

Recipe = Literal["default", "paper"]
Solver = Literal["adam-alternating", "lbfgs"]
FewshotSolver = Literal["adam", "lbfgs", "newton"]
Regularizer = Literal["cosine", "l2"]
Init = Literal["spectral", "svd", "random"]
CvHoldout = Literal["users", "comparisons"]
Weights = Literal[WeightSpace, "auto"]
AUTO = "auto"
LEARNED = "learned"
#: the isotropic prior strength used where a learned prior cannot be (K = 1, one user)
FALLBACK_PRIOR = 0.3
RECIPES: tuple[str, ...] = get_args(Recipe)
SOLVERS: tuple[str, ...] = get_args(Solver)
FEWSHOT_SOLVERS: tuple[str, ...] = get_args(FewshotSolver)
REGULARIZERS: tuple[str, ...] = get_args(Regularizer)
INITS: tuple[str, ...] = get_args(Init)
CV_HOLDOUTS: tuple[str, ...] = get_args(CvHoldout)
WEIGHTS: tuple[str, ...] = get_args(Weights)

POSITIVE = Interval(float, 0, None, closed="neither")
NON_NEGATIVE = Interval(float, 0)
COUNT = Interval(int, 0)
FRACTION = Interval(float, 0, 1)


def _f(default: Any, help: str, *rule: Any) -> Any:
    """A field: its default, help text and rule (the constraints any of which its values
    meet; a ``Literal`` type stands for its words)."""
    checks = tuple(choices_of(r) if get_args(r) else r for r in rule)
    if isinstance(default, list | tuple):
        default = tuple(default)
    return field(default=default, metadata={"help": help, "rule": checks})


@dataclass(frozen=True)
class FitConfig:
    """Every knob of the joint and few-shot fits. Build with :meth:`for_recipe`.

    The field help texts below are the documentation (``FitConfig.help(name)``).
    """

    recipe: Recipe = _f(
        "default", "'default' (lore-rm's) or 'paper' (the published recipe).", Recipe
    )
    scale: float = _f(
        1.0,
        "Fixed scale s in P = sigmoid(s * x V w) (paper 0.01; default 1 on standardised features).",
        POSITIVE,
    )
    standardize: bool = _f(
        True,
        "Divide each feature dimension by its RMS before fitting (folded back into the basis).",
        Flag(),
    )
    solver: Solver = _f(
        "lbfgs",
        "'lbfgs' (joint, to convergence) or 'adam-alternating' (the published loop).",
        Solver,
    )
    weights: Weights = _f(
        "simplex",
        "Users' weights: 'simplex' (LoRe's: a point of the probability simplex over the basis "
        "columns), 'signed' (the population's mean weights plus a signed offset per user, so "
        "a user can want the opposite of a column) or 'auto' (chosen by the cross-validation).",
        Weights,
    )
    init: Init = _f(
        "spectral",
        "Start of the L-BFGS fit: 'spectral' (pooled direction + users' top spread directions), "
        "'svd' (top singular vectors of the users' summed features) or 'random'.",
        Init,
    )
    n_iter: int = _f(1000, "Iteration cap (paper: exactly 1000 Adam steps).", COUNT)
    tol: float = _f(1e-5, "L-BFGS stops when the largest gradient entry is below this.", POSITIVE)
    lr: float = _f(1.0, "Learning rate (Adam) or step size (L-BFGS).", POSITIVE)
    alpha: float = _f(
        0.0, "Weight of the penalty tying basis columns to the reference head.", NON_NEGATIVE
    )
    regularizer: Regularizer = _f(
        "cosine",
        "'cosine' (alpha * mean_k(1 - cos(V_k, v_ref))) or 'l2' (alpha * sum ||V_k - v_ref||^2).",
        Regularizer,
    )
    warmup: tuple[float, float] = _f(
        (0.2, 0.8),
        "Fractions of n_iter where the alpha ramp starts and ends (Adam solver).",
        Several(FRACTION, length=2, ordered=True),
    )
    weight_decay: float | str = _f(
        AUTO,
        "Ridge (weight_decay/2) * ||V||^2 on the standardised basis; 'auto' chooses it by "
        "cross-validation over weight_decay_grid.",
        Word(AUTO),
        NON_NEGATIVE,
    )
    weight_decay_grid: tuple[float, ...] = _f(
        (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
        "Ridge values tried by weight_decay='auto'.",
        Several(NON_NEGATIVE),
    )
    ridge_path: bool = _f(
        True,
        "Reach the ridge by a warm-started path through the weaker weight_decay_grid values, "
        "as the cross-validation scores it (a cold start at a strong ridge can stop at the "
        "pooled saddle); false starts at the ridge directly.",
        Flag(),
    )
    ridge_path_start: float | None = _f(
        None,
        "The weakest ridge of that path (None: the grid's weakest). rank='auto' sets it to "
        "where its search started the chosen rank's path, so the refit is the cell it scored.",
        Word(None),
        NON_NEGATIVE,
    )
    rank_grid: tuple[int, ...] = _f(
        (1, 2, 3, 4, 6, 8), "Ranks tried by rank='auto'.", Several(Interval(int, 1))
    )
    cv_folds: int = _f(
        5, "Cross-validation folds for the 'auto' settings (see cv_holdout).", Interval(int, 2)
    )
    cv_holdout: CvHoldout = _f(
        "users",
        "What a cross-validation fold holds out: 'users' (whole users; the fold's basis is scored "
        "on them after fitting their weights on part of their comparisons, as for new users) or "
        "'comparisons' (a share of every user's comparisons).",
        CvHoldout,
    )
    cv_exclude_pairs: bool = _f(
        True,
        "With users held out, score them only on pairs of texts their fold never trained on, "
        "as new users meet new prompts: every pair is dealt to a fold, and a held-out row "
        "whose pair other users labelled is scored (its pair's training rows left out) only "
        "in the pair's own fold (dense features name no texts: every held-out row is scored).",
        Flag(),
    )
    one_se: bool = _f(
        True,
        "Pick the simplest setting (lower rank, then stronger ridge) whose cross-validated "
        "log-loss is within one standard error of the best.",
        Flag(),
    )
    calibrate: bool = _f(
        True,
        "Multiply the fitted model's margins (rewards, probabilities, their std) by the scale at "
        "which the cross-validation's held-out users find them calibrated (learned when an "
        "'auto' setting is searched with cv_holdout='users'; otherwise, or when false, 1).",
        Flag(),
    )
    hierarchical: bool = _f(
        True,
        "Fit the seen users' weights under the population prior learned from them (empirical "
        "Bayes, alternating with the basis), as new users' are: users with few comparisons are "
        "pulled toward the population as far as their data says; false leaves them free "
        "(only user_l2).",
        Flag(),
    )
    personalization: float | str = _f(
        AUTO,
        "How far users move from the shared weights toward their own, in [0, 1]: "
        "w_bar + strength * (w_u - w_bar) (0 = every user gets the shared reward); 'auto' "
        "takes the weakest of personalization_grid within one standard error of the best "
        "cross-validated loss (1 when nothing is searched).",
        Word(AUTO),
        FRACTION,
    )
    personalization_grid: tuple[float, ...] = _f(
        (0.0, 0.25, 0.5, 0.75, 1.0), "Strengths tried by personalization='auto'.", Several(FRACTION)
    )
    user_l2: float = _f(
        1e-3, "L2 penalty on user logits (keeps weights off the simplex's corners).", NON_NEGATIVE
    )
    validation_fraction: float = _f(
        0.0,
        "Optional early-stopping guard: share of training comparisons held out; the fit stops "
        "after `patience` checks (every 25 iterations) without held-out improvement (0 = off).",
        Interval(float, 0, 1, closed="left"),
    )
    patience: int = _f(5, "Checks without held-out improvement before the guard stops.", COUNT)
    prune_threshold: float | None = _f(
        None,
        "After fitting, drop basis columns whose largest user weight is below this.",
        Word(None),
        NON_NEGATIVE,
    )
    fewshot_solver: FewshotSolver = _f(
        "newton",
        "New-user fit: 'newton' (MAP, every user's damped Newton steps at once), 'lbfgs' (the "
        "same MAP by one L-BFGS over all users) or 'adam' (published).",
        FewshotSolver,
    )
    fewshot_n_iter: int = _f(100, "Iterations (Newton steps) of the new-user fit.", COUNT)
    fewshot_lr: float = _f(1.0, "Learning rate / step size of the new-user fit.", POSITIVE)
    fewshot_prior: float | str = _f(
        LEARNED,
        "Prior on a new user's logits: 'learned' (a mean and covariance learned from the seen "
        "users, empirical Bayes) or a number (the strength of an isotropic Gaussian around "
        "the population's mean weights).",
        Word(LEARNED),
        NON_NEGATIVE,
    )
    seed: int = _f(0, "Seeds every random draw of the fit.", COUNT)

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
            value = overrides.get(name)
            if isinstance(value, Iterable) and not isinstance(value, str | tuple):
                overrides[name] = tuple(value)
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
        """Raise :class:`LoreError` naming the first field whose value its rule refuses."""
        for f in fields(self):
            check(f.name, getattr(self, f.name), rule_of(f))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        """The config :meth:`to_dict` wrote. Keys this lore-rm does not know (a folder written
        by a newer one) are left out, with a warning naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(
                f"fit settings this lore-rm does not know, ignored: {', '.join(unknown)} "
                "(written by a newer lore-rm?)",
                stacklevel=2,
            )
        kw = {k: v for k, v in d.items() if k in known}
        for name in TUPLE_FIELDS:
            if isinstance(kw.get(name), list):
                kw[name] = tuple(kw[name])
        return cls(**kw)


#: the fields whose values are tuples (lists in JSON)
TUPLE_FIELDS = tuple(
    f.name for f in fields(FitConfig) if any(isinstance(c, Several) for c in rule_of(f))
)


def field_default(name: str) -> Any:
    f = next(f for f in fields(FitConfig) if f.name == name)
    return f.default if f.default is not MISSING else None
