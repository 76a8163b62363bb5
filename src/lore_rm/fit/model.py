"""The personalised low-rank reward model (scikit-learn style estimator)."""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast, overload

import numpy as np
import torch

from lore_rm.comparisons import Comparisons
from lore_rm.devices import as_device
from lore_rm.errors import DataError, LoreError, UnknownUserError
from lore_rm.fit.active import DUPLICATE_TOL, QuestionSelection, select
from lore_rm.fit.auto import AUTO, chosen_strength, diagnose, margin_calibration, resolve_auto
from lore_rm.fit.config import FALLBACK_PRIOR, LEARNED, FitConfig, Recipe
from lore_rm.fit.empirical_bayes import learn_prior
from lore_rm.fit.hierarchy import shrink_seen_users
from lore_rm.fit.history import FitHistory
from lore_rm.fit.link import WeightSpace, check_space
from lore_rm.fit.persistence import load_model, save_model
from lore_rm.fit.posterior import (
    WeightsPosterior,
    covariance_from_hessian,
    linear_std,
    logit_hessian,
    probit_proba,
)
from lore_rm.fit.prior import LogitPrior, isotropic_prior
from lore_rm.fit.solvers import (
    bt_margins,
    feature_scale,
    fit_joint,
    fit_user_weights,
    signed_prior,
)
from lore_rm.fit.user_table import UserTable
from lore_rm.metrics import mean_accuracy, per_user_accuracy
from lore_rm.ranking import LEVEL, Ranking, candidate_groups, rank_groups
from lore_rm.reproducible_blas import check_strict_products
from lore_rm.threads import torch_threads

Tensor = torch.Tensor
#: a personalisation strength: the model's (None), one number, or one per user / row
Strength = float | Sequence[float | None] | Tensor | None


class LowRankReward:
    """Shared low-rank reward basis ``V`` (d x K) plus a simplex weight vector per user.

    The reward of user ``u`` for a conversation with embedding ``e`` is
    ``margin_scale * scale * e @ V @ w_u`` (a Bradley–Terry logit: ``P(a > b) =
    sigmoid(r(a) - r(b))``; ``margin_scale`` is learned by the cross-validation, see
    :mod:`lore_rm.fit.calibration`, and 1 when it was not).
    Rank 0 is the reference head, held as data: the basis is ``v_ref`` as one column and every
    user's weight is 1 (``e @ v_ref``, the same for every user); rank 1 is one pooled
    Bradley–Terry reward.

    Hyperparameters live in the constructor (``settings`` override single fields of the
    recipe's :class:`~lore_rm.fit.config.FitConfig`); learned state ends in ``_``.

    ``threads``: torch's CPU thread count while :meth:`fit` runs, restored afterwards:
    ``"auto"`` (the default) applies the rule of the commands' ``--threads auto`` (the usable
    CPUs not already busy, at most torch's own setting; see :mod:`lore_rm.threads`), an
    integer sets it, ``None`` leaves torch's setting alone.

    Attributes
    ----------
    rank_ : int
        The rank fitted (the one chosen when ``rank="auto"``); 0 is the reference head.
    n_components_ : int
        Basis columns kept (``rank_``, less columns pruned by ``prune_threshold``).
    d_ : int
        The embedding dimension.
    basis_ : Tensor (d, K)
        The shared reward basis ``V``, in raw embedding units.
    users_ : list[str]
        The known user ids, in the order of ``user_weights_`` (read only).
    user_weights_ : Tensor (U, K)
        Each known user's weights (a point of the simplex, or signed: ``weight_space_``).
    population_weights_ : Tensor (K,)
        The mean weights of the users the fit saw: the shared reward, and unknown users'.
    user_table_ : UserTable
        The state behind the three above (:class:`~lore_rm.fit.user_table.UserTable`).
    weight_space_ : {"simplex", "signed"}
        What a user's weights are (:mod:`lore_rm.fit.link`).
    personalization_ : float
        The strength in [0, 1] at which users' own weights are used
        (``w_bar + personalization_ * (w_u - w_bar)``; 0: everyone gets the shared reward).
    scale_ : float
        The fixed scale ``s`` of the Bradley–Terry logit the fits use.
    margin_scale_ : float
        The calibration of every output (:mod:`lore_rm.fit.calibration`); 1 when not learned.
    reference_head_ : Tensor (d,) or None
        The backbone's own reward direction, when it has one.
    prior_ : LogitPrior or None
        The few-shot prior learned from the seen users (:meth:`few_shot_prior`).
    config_ : FitConfig
        The settings the model was fitted with (the 'auto' ones resolved).
    history_ : FitHistory
        What the fit recorded: the search, calibration, prior, hierarchy
        (:class:`~lore_rm.fit.history.FitHistory`).
    """

    rank_: int
    d_: int
    basis_: Tensor
    user_table_: UserTable
    weight_space_: WeightSpace
    personalization_: float
    scale_: float
    margin_scale_: float
    reference_head_: Tensor | None
    prior_: LogitPrior | None
    config_: FitConfig
    history_: FitHistory

    def __init__(
        self,
        rank: int | str = "auto",
        recipe: Recipe = "default",
        *,
        backbone: str | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        threads: int | str | None = "auto",
        **settings,
    ) -> None:
        self.rank = rank
        self.recipe = recipe
        self.backbone = backbone
        self.device = device
        self.seed = seed
        self.threads = threads
        self.settings = settings

    # ---- configuration --------------------------------------------------------------------
    @property
    def config(self) -> FitConfig:
        return FitConfig.for_recipe(self.recipe, seed=self.seed, **self.settings)

    def _check_rank(self, d: int) -> None:
        if self.rank == AUTO:
            return
        if not isinstance(self.rank, int | np.integer) or self.rank < 0:
            raise LoreError(f"rank must be a non-negative integer or 'auto', got {self.rank!r}")
        if self.rank > d:
            raise LoreError(f"rank {self.rank} is larger than the embedding dimension d = {d}")

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "basis_")

    @property
    def reward_scale(self) -> float:
        """The factor of every output, ``margin_scale_ * scale_`` (``r = reward_scale * e @ V
        @ w``); the fits use ``scale_`` alone."""
        return self.scale_ * getattr(self, "margin_scale_", 1.0)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise LoreError("this model is not fitted yet: call fit() or from_pretrained()")

    @classmethod
    def from_arrays(
        cls,
        basis: Tensor | np.ndarray,
        user_weights: Tensor | np.ndarray,
        users: Sequence[str],
        *,
        scale: float = 1.0,
        margin_scale: float = 1.0,
        population_weights: Tensor | np.ndarray | None = None,
        reference_head: Tensor | np.ndarray | None = None,
        strength: float = 1.0,
        weight_space: str = "simplex",
        rank: int | None = None,
        recipe: Recipe = "default",
        backbone: str | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        fit_config: FitConfig | None = None,
        prior: LogitPrior | None = None,
        threads: int | str | None = "auto",
        **settings,
    ) -> LowRankReward:
        """A fitted model from its arrays: basis (d, K), user weights (U, K) and user ids.

        ``population_weights`` default to the mean of ``user_weights``; ``rank`` defaults to
        K; ``fit_config`` to the recipe's settings. ``margin_scale`` multiplies every output
        (rewards, margins and their std), not the fits. ``strength`` is the personalisation
        strength (``personalization_``) and ``weight_space`` "simplex" or "signed";
        ``prior`` the learned few-shot prior (``prior_``), if any.
        """
        basis = torch.as_tensor(basis, dtype=torch.float32).clone()  # never the caller's memory
        weights = torch.as_tensor(user_weights, dtype=torch.float32).clone()
        users = [str(u) for u in users]
        if basis.ndim != 2:
            raise DataError(f"basis must have shape (d, K), got {tuple(basis.shape)}")
        d, k = basis.shape
        if weights.shape != (len(users), k):
            raise DataError(
                f"user_weights must have shape ({len(users)}, {k}), got {tuple(weights.shape)}"
            )
        if not (np.isfinite(margin_scale) and margin_scale > 0):
            raise DataError(f"margin_scale must be a positive number, got {margin_scale!r}")
        if population_weights is None:
            population = weights.mean(dim=0) if len(users) else torch.full((k,), 1.0 / max(k, 1))
        else:
            population = torch.as_tensor(population_weights, dtype=torch.float32)
        model = cls(
            rank=k if rank is None else rank,
            recipe=recipe,
            backbone=backbone,
            device=device,
            seed=seed,
            threads=threads,
            **settings,
        )
        model.rank_ = k if rank is None or rank == AUTO else int(rank)
        model.d_ = int(d)
        model.scale_ = float(scale)
        model.margin_scale_ = float(margin_scale)
        model.user_table_ = UserTable(users, weights, population)
        model.config_ = fit_config if fit_config is not None else model.config
        model.basis_ = basis
        model.reference_head_ = _as_reference(reference_head, int(d))
        model.history_ = {}
        model.prior_ = prior
        model.personalization_ = float(strength)
        model.weight_space_ = check_space(weight_space)
        return model

    # ---- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        comparisons: Comparisons,
        reference_head: Tensor | np.ndarray | None = None,
        *,
        progress: bool = False,
    ) -> LowRankReward:
        """Learn the basis and the weights of every user in ``comparisons``.

        ``rank="auto"`` and ``weight_decay="auto"`` (the default) are chosen first by
        cross-validation over ``comparisons`` (:mod:`lore_rm.fit.selection`); the model is
        then refitted on all of them. The search is in ``history_["selection"]``; with users
        held out it also learns ``margin_scale_`` (``history_["calibration"]``). Runs with
        ``threads`` torch threads (see the class docstring).
        """
        with torch_threads(self.threads) as count:
            self._fit(comparisons, reference_head, progress)
        self.history_["threads"] = {
            "count": count,
            "reproducible_products": check_strict_products(),
        }
        return self

    def _fit(
        self, comparisons: Comparisons, reference_head: Tensor | np.ndarray | None, progress: bool
    ) -> LowRankReward:
        cfg = self.config
        _check_nonempty(comparisons, "fit")
        self._check_rank(comparisons.d)
        _warn_rank_against_users(self.rank, comparisons)
        ref = _as_reference(reference_head, comparisons.d)
        if self.rank == 0 and ref is None:
            raise LoreError(
                "rank 0 is the reference model: pass the backbone's reference_head (an "
                "embedding model without a reward head has none: use rank >= 1 or 'auto')"
            )
        if cfg.alpha > 0 and ref is None:
            raise LoreError(
                f"alpha = {cfg.alpha:g} pulls the basis toward the reference head, but no "
                "reference_head was given (the backbone has no reward head): use alpha = 0"
            )
        device = as_device(self.device)
        data = comparisons.to(device=device, dtype=torch.float32, keep_low_precision=True)
        if data.is_table:
            data = data.compact(centre=True).with_user_ids(comparisons.user_ids)
        ref_dev = ref.to(device) if ref is not None else None
        # the fit's units, for the search, the fit and the shrinkage: one pass over the rows
        sigma = feature_scale(data, cfg.standardize) if self.rank != 0 else None
        rank, cfg, selection = resolve_auto(
            data, self.rank, cfg, ref_dev, progress=progress, sigma=sigma
        )
        if rank <= 1:  # one column, weight 1 for everyone: no weight space to speak of
            cfg = replace(cfg, weights="simplex")
        self.weight_space_ = cfg.space
        self.rank_ = rank
        self.d_ = comparisons.d
        users = list(comparisons.user_ids)
        self.reference_head_ = ref
        self.config_ = cfg
        shrunk: dict | None = None
        learned: LogitPrior | None = None
        if rank == 0:  # the reference head as a one-column basis, weight 1 for everyone
            self.basis_ = ref[:, None].clone()  # type: ignore[index]  # checked above
            weights = torch.ones(len(users), 1)
            self.scale_ = 1.0
            self.history_ = {}
        else:
            result = fit_joint(data, rank, cfg, ref_dev, progress=progress, sigma=sigma)
            if cfg.hierarchical and cfg.solver == "lbfgs" and rank > 1:
                result, learned, shrunk = shrink_seen_users(data, result, cfg, ref_dev, sigma)
            self.basis_ = result.basis.detach().cpu()
            weights = result.user_weights.detach().cpu()
            self.scale_ = float(cfg.scale)
            self.history_ = cast(FitHistory, result.history)
            if shrunk is not None:
                self.history_["hierarchy"] = shrunk
        self.personalization_ = chosen_strength(selection, cfg, rank)
        self.history_.update(diagnose(selection))
        self.history_["calibration"] = margin_calibration(selection, cfg.calibrate, rank)
        self.margin_scale_ = float(self.history_["calibration"]["margin_scale"])
        counts = comparisons.counts_per_user().cpu()
        fitted = counts > 0
        population = (
            weights[fitted].mean(dim=0)
            if fitted.any()
            else torch.full((self.n_components_,), 1.0 / max(self.n_components_, 1))
        )
        self.user_table_ = UserTable(users, weights, population)
        self.prior_ = None
        if cfg.fewshot_prior == LEARNED and rank > 1 and self.weight_space_ == "signed":
            self.prior_ = signed_prior(self.population_weights_)
            self.history_["prior"] = {
                "kind": "isotropic",
                "strength": float(self.prior_.precision[0, 0]),
                "why": "signed weights: the joint fit's prior on every user's offset",
            }
        elif cfg.fewshot_prior == LEARNED and rank > 0:
            if shrunk and shrunk.get("prior"):  # learned on the final basis by the hierarchy
                self.prior_ = learned.to("cpu") if learned is not None else None
                self.history_["prior"] = shrunk.pop("prior")
            else:
                self._learn_prior(data, int(fitted.sum()), device)
        return self

    def _learn_prior(self, data: Comparisons, n_fitted: int, device: torch.device) -> None:
        """Learn the few-shot prior from the seen users (``fewshot_prior='learned'``); where
        it cannot be learned (one column, fewer than 2 users, weights that never vary) the
        isotropic prior of strength ``FALLBACK_PRIOR`` serves, and the history says why."""
        if self.n_components_ < 2 or n_fitted < 2:
            why = "one basis column" if self.n_components_ < 2 else "fewer than 2 seen users"
            self.history_["prior"] = {"kind": "isotropic", "strength": FALLBACK_PRIOR, "why": why}
            return
        fallback = {"kind": "isotropic", "strength": FALLBACK_PRIOR}
        try:
            self.prior_, self.history_["prior"] = learn_prior(
                data,
                self.basis_.to(device),
                self.scale_,
                self.config_,
                self.user_weights_.to(device),
                self.population_weights_.to(device),
            )
        except LoreError as exc:
            self.history_["prior"] = {**fallback, "why": str(exc)}
        self.prior_ = self.prior_.to("cpu") if self.prior_ is not None else None

    def few_shot_prior(self) -> LogitPrior:
        """The prior new users' weights are fitted under (:mod:`lore_rm.fit.prior`): the
        learned one when ``fewshot_prior='learned'`` and the fit could learn it, else the
        isotropic prior of that strength around the population's mean weights."""
        self._require_fitted()
        strength = self.config.fewshot_prior
        prior = getattr(self, "prior_", None)
        if strength == LEARNED and prior is not None and prior.k == self.n_components_:
            return prior
        return isotropic_prior(
            self.population_weights_,
            FALLBACK_PRIOR if strength == LEARNED else float(strength),
            self.weight_space_,
        )

    def personalize(
        self,
        comparisons: Comparisons,
        users: Sequence[str] = (),
        *,
        progress: bool = False,
    ) -> LowRankReward:
        """Fit (or refit) the weights of the users in ``comparisons`` with the basis frozen.

        New users are added; seen users named here get new weights from these comparisons
        alone. Ids in ``users`` with no comparison get the population's mean weights (with a
        warning). :meth:`fit_user_weights` is the same fit without changing the model.
        """
        ids, weights = self._user_weights(comparisons, users, progress)
        self.set_user_weights(ids, weights)
        return self

    def fit_user_weights(
        self,
        comparisons: Comparisons,
        users: Sequence[str] = (),
        *,
        progress: bool = False,
    ) -> tuple[list[str], Tensor]:
        """The weights :meth:`personalize` would set, without setting them.

        Returns the user ids (those with comparisons, then the other ids of ``users``) and
        their weights (len(ids), K); the model is left unchanged.
        """
        return self._user_weights(comparisons, users, progress)

    def _user_weights(
        self, comparisons: Comparisons, users: Sequence[str], progress: bool
    ) -> tuple[list[str], Tensor]:
        self._require_fitted()
        if comparisons.n and comparisons.d != self.d_:
            raise DataError(
                f"comparisons have d = {comparisons.d} but the model was fitted on d = {self.d_}"
            )
        given = comparisons.counts_per_user().tolist() if comparisons.n else []
        present = [u for u, c in zip(comparisons.user_ids, given, strict=False) if c > 0]
        ids = list(dict.fromkeys([*present, *map(str, users)]))
        data = comparisons.with_user_ids(ids) if comparisons.n else None
        counts = (
            data.counts_per_user() if data is not None else torch.zeros(len(ids), dtype=torch.int64)
        )
        empty = [u for u, c in zip(ids, counts.tolist(), strict=True) if c == 0]
        if empty:
            warnings.warn(
                f"{len(empty)} user(s) have no comparisons (e.g. {empty[0]!r}): "
                "they get the population's mean weights",
                stacklevel=3,  # the caller of personalize() or fit_user_weights()
            )
        device = as_device(self.device)
        basis = self.basis_.to(device)
        if self.n_components_ == 1 and bool((self.population_weights_ == 1).all()):
            weights = torch.ones(len(ids), 1)  # one column, weight 1 for all: nothing to fit
        elif data is not None and data.n:
            weights = fit_user_weights(
                data.to(device=device, dtype=torch.float32, keep_low_precision=True)
                .compact(centre=True)
                .with_user_ids(ids),
                basis,
                self.scale_,
                self.config,
                self.population_weights_,
                prior=self.few_shot_prior(),
                progress=progress,
            ).cpu()
        else:
            weights = self.population_weights_.expand(len(ids), -1).clone()
        return ids, weights

    def set_user_weights(self, ids: Sequence[str], weights: Tensor) -> None:
        """Set the weights (len(ids), K) of ``ids``, adding the ids not known yet.

        Costs O(len(ids)) amortised, whatever the number of users (:class:`UserTable`).
        """
        self._require_fitted()
        self.user_table_.set(ids, weights)

    def drop_users(self, ids: Sequence[str]) -> list[str]:
        """Forget ``ids`` (they get the population's weights from now on); returns those the
        model knew. Costs one pass over the users."""
        self._require_fitted()
        return self.user_table_.drop(ids)

    def for_users(self, users: Sequence[str | None]) -> LowRankReward:
        """A copy of the model that knows only those of ``users`` it knows now, with their
        current weights (the others are unknown to it). The basis, the prior and the settings
        are shared, read only: posteriors, rewards and questions for a few users, computed
        while this model goes on changing (the service does so outside its lock)."""
        self._require_fitted()
        view = copy.copy(self)
        view.user_table_ = self.user_table_.subset(users)
        return view

    # ---- using -----------------------------------------------------------------------------
    @property
    def users_(self) -> list[str]:
        """The known user ids, in weight-row order (read only: change them through
        :meth:`set_user_weights`, :meth:`personalize` or :meth:`drop_users`)."""
        return self.user_table_.ids

    @property
    def user_weights_(self) -> Tensor:
        """The users' weights (U, K), in the order of ``users_``."""
        return self.user_table_.weights

    @property
    def population_weights_(self) -> Tensor:
        """The population's mean weights (K,): unknown users' and the shared reward's."""
        return self.user_table_.population

    @property
    def n_components_(self) -> int:
        """Columns of the basis actually kept (the rank, less pruned columns)."""
        return int(self.basis_.shape[1])

    @property
    def personalizes(self) -> bool:
        """Whether users can get different rewards: rank >= 2 and a strength above 0."""
        return self.rank_ > 0 and self.n_components_ > 1 and self.personalization_ > 0

    def _strength(self, personalization: Strength = None) -> float | Tensor:
        """The strength(s) to use: the model's ``personalization_`` for None, else the given
        number, or per row a sequence / tensor whose None or NaN entries take the model's."""
        if personalization is None:
            return self.personalization_
        if isinstance(personalization, int | float):
            lam: float | Tensor = float(personalization)
            bad = not (0.0 <= personalization <= 1.0)
        else:
            if isinstance(personalization, Tensor):
                lam = personalization.detach().to(torch.float32).reshape(-1)
            else:
                values = [math.nan if v is None else float(v) for v in personalization]
                lam = torch.tensor(values, dtype=torch.float32)
            lam = torch.where(torch.isnan(lam), self.personalization_, lam)
            bad = bool(((lam < 0) | (lam > 1)).any())
        if bad:
            raise LoreError(f"personalization must be in [0, 1], got {personalization!r}")
        return lam

    def weights_for(
        self,
        users: Sequence[str | None],
        *,
        unknown: str = "error",
        personalization: Strength = None,
    ) -> tuple[Tensor, Tensor]:
        """Weights (M, K) for ``users`` and a bool mask of which were known.

        A ``None`` id is an unknown user (as in the service, which flags it). Unknown users
        are an :class:`UnknownUserError`, or with ``unknown="mean"`` get the population's
        mean weights (and ``known`` False).
        A known user's weights are ``w_bar + lam * (w_u - w_bar)``: ``lam`` is
        ``personalization`` (0 = the shared weights ``w_bar``, 1 = the user's own; one number,
        or one per user where None takes the default), by default the model's
        ``personalization_``, chosen by the cross-validation.
        """
        lam = self._strength(personalization)
        w, known = self._own_weights(users, unknown)
        if isinstance(lam, Tensor):
            if lam.numel() != len(users):
                raise DataError(f"{lam.numel()} personalization values for {len(users)} users")
            mix = torch.where(known, lam, 1.0)[:, None]
            return self.population_weights_ + mix * (w - self.population_weights_), known
        if lam != 1.0 and bool(known.any()):
            w[known] = self.population_weights_ + lam * (w[known] - self.population_weights_)
        return w, known

    def _own_weights(self, users: Sequence[str | None], unknown: str) -> tuple[Tensor, Tensor]:
        """Each user's own fitted weights (the population's for unknown ones) and the mask."""
        self._require_fitted()
        return self.user_table_.lookup(users, unknown)

    @overload
    def reward(
        self,
        embeddings,
        users: str | Sequence[str | None],
        *,
        unknown: str = ...,
        return_std: Literal[False] = ...,
        posterior: WeightsPosterior | None = ...,
        personalization: Strength = ...,
        return_known: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def reward(
        self,
        embeddings,
        users: str | Sequence[str | None],
        *,
        unknown: str = ...,
        return_std: Literal[True],
        posterior: WeightsPosterior | None = ...,
        personalization: Strength = ...,
        return_known: Literal[False] = ...,
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def reward(
        self,
        embeddings,
        users: str | Sequence[str | None],
        *,
        unknown: str = ...,
        return_std: Literal[False] = ...,
        posterior: WeightsPosterior | None = ...,
        personalization: Strength = ...,
        return_known: Literal[True],
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def reward(
        self,
        embeddings,
        users: str | Sequence[str | None],
        *,
        unknown: str = ...,
        return_std: Literal[True],
        posterior: WeightsPosterior | None = ...,
        personalization: Strength = ...,
        return_known: Literal[True],
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def reward(
        self,
        embeddings,
        users: str | Sequence[str | None],
        *,
        unknown: str = "error",
        return_std: bool = False,
        posterior: WeightsPosterior | None = None,
        personalization: Strength = None,
        return_known: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Personalised reward (M,) of each embedding row for its user (or one user for all).

        ``reward = reward_scale * e @ basis @ w_u`` (rank 0: the basis is the reference head
        and every weight is 1).
        A ``None`` user is unknown: an error, or the population's mean weights with
        ``unknown="mean"`` (see :meth:`weights_for`).

        ``return_std=True`` (with a ``posterior`` from :meth:`weights_posterior`) returns
        ``(reward, std)``: the std (M,) of the reward under the Laplace posterior of the
        user's logits, by the delta method through the softmax. The reward itself is
        unchanged.

        ``personalization`` (in [0, 1]; default the model's ``personalization_``) moves every
        known user between the shared weights (0) and their own (1); see :meth:`weights_for`.

        ``return_known=True`` appends which rows' users the model knows (M,) bool (the others
        got the population's weights): ``(reward, known)`` or ``(reward, std, known)``.
        """
        self._require_fitted()
        e = torch.as_tensor(embeddings)
        given_shape = tuple(e.shape)
        squeeze = e.ndim == 1
        e = e.reshape(1, -1) if squeeze else e
        if e.ndim != 2 or e.shape[1] != self.d_:
            raise DataError(f"embeddings must have shape (M, {self.d_}), got {given_shape}")
        e = e.to(torch.float32)
        if not torch.isfinite(e).all():
            raise DataError("embeddings hold NaN or inf")
        if isinstance(users, str):
            users = [users] * e.shape[0]
        if len(users) != e.shape[0]:
            raise DataError(f"{len(users)} users given for {e.shape[0]} embeddings")
        lam = self._strength(personalization)
        w, known = self.weights_for(list(users), unknown=unknown, personalization=lam)
        y = e @ self.basis_
        r = self.reward_scale * (y * w).sum(dim=1)
        if not return_std:
            return (r, known) if return_known else r
        std = self._std(y, list(users), known, posterior, lam).to(r.dtype)
        return (r, std, known) if return_known else (r, std)

    def _std(
        self,
        y: Tensor,
        users: list,
        known: Tensor,
        posterior: WeightsPosterior | None,
        lam: float | Tensor,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Delta-method std of ``reward_scale * y @ w`` for each row of ``y``, whose user is
        ``users[rows[i]]`` (``rows`` None: row i is user i). The Jacobian is the softmax's at
        the user's own weights, times the strength ``lam`` for known users (unknown users
        have the prior's spread around the population)."""
        cov = self._row_covariances(users, known, posterior)
        own, _ = self._own_weights(users, "mean")
        if rows is not None:
            cov, own, known = cov[rows], own[rows], known[rows]
        std = linear_std(y, own, cov, self.reward_scale, self.weight_space_)
        if isinstance(lam, Tensor) and rows is not None:
            lam = lam[rows]
        return torch.where(known, lam * std, std)

    def rank_candidates(
        self,
        candidates: Tensor | Sequence[Tensor],
        users: str | None | Sequence[str | None],
        *,
        posterior: WeightsPosterior | None = None,
        level: float = LEVEL,
        unknown: str = "error",
    ) -> Ranking | list[Ranking]:
        """Best-of-N: candidate embeddings (N, d) ranked by a user's reward, best first; a
        list of such tensors (one per prompt, ``users`` one id each) gives a list. With a
        ``posterior``, intervals at ``level``; see :mod:`lore_rm.ranking`. (``rank`` is
        the rank hyperparameter.)"""
        e, rows, per_group, sizes = candidate_groups(candidates, users)
        std = None
        if posterior is None:
            r = self.reward(e, rows, unknown=unknown)
        else:
            r, std = self.reward(e, rows, unknown=unknown, return_std=True, posterior=posterior)
        _, known = self.weights_for(per_group, unknown="mean")
        out = rank_groups(r, sizes, known=known, std=std, level=level)
        return out[0] if isinstance(candidates, Tensor) else out

    def margins(
        self,
        comparisons: Comparisons,
        *,
        unknown: str = "error",
        personalization: Strength = None,
    ) -> Tensor:
        """Bradley–Terry logit ``r(chosen) - r(rejected)`` of every comparison (N,)."""
        self._require_fitted()
        _check_dim(comparisons, self.d_)
        data = comparisons.to(dtype=torch.float32, keep_low_precision=True)
        w, _ = self.weights_for(
            list(comparisons.user_ids), unknown=unknown, personalization=personalization
        )
        z = data.project_for_scoring(self.basis_.to(data.device))
        return bt_margins(z, w.to(z.device), data.user_index, self.reward_scale).cpu()

    def predict_proba(
        self,
        comparisons: Comparisons,
        *,
        posterior: WeightsPosterior | None = None,
        unknown: str = "error",
        personalization: Strength = None,
    ) -> Tensor:
        """P(chosen preferred to rejected) for every comparison.

        With a ``posterior`` (:meth:`weights_posterior`) the probability is averaged over the
        user's logits by the probit approximation, ``sigmoid(m / sqrt(1 + pi s^2 / 8))``, with
        ``m`` the margin and ``s`` its delta-method std: uncertain users get probabilities
        closer to 0.5.
        """
        if posterior is None:
            return torch.sigmoid(
                self.margins(comparisons, unknown=unknown, personalization=personalization)
            )
        mean, std = self.margin_std(
            comparisons, posterior, unknown=unknown, personalization=personalization
        )
        return probit_proba(mean, std)

    def margin_std(
        self,
        comparisons: Comparisons,
        posterior: WeightsPosterior,
        *,
        unknown: str = "error",
        personalization: Strength = None,
    ) -> tuple[Tensor, Tensor]:
        """Margins (N,) and their delta-method std (N,) under ``posterior``."""
        self._require_fitted()
        _check_dim(comparisons, self.d_)
        data = comparisons.to(dtype=torch.float32, keep_low_precision=True)
        users = list(comparisons.user_ids)
        lam = self._strength(personalization)
        w, known = self.weights_for(users, unknown=unknown, personalization=lam)
        z = data.project(self.basis_.to(data.device)).cpu()
        rows = data.user_index.cpu()
        mean = bt_margins(z, w, rows, self.reward_scale)
        std = self._std(z, users, known, posterior, lam, rows)
        return mean, std.to(mean.dtype)

    def weights_posterior(
        self,
        comparisons: Comparisons | None = None,
        users: Sequence[str] = (),
        *,
        prior_precision: float | None = None,
        hessian: str = "gauss-newton",
        unknown: str = "error",
    ) -> LaplacePosterior:
        """Laplace posterior of users' logits at their fitted weights (nothing is stored).

        The model does not keep training comparisons: pass those each user's weights were
        fitted on (seen users: the ``fit`` data; new users: the ``personalize`` data). Covers
        the users with comparisons, then the other ids of ``users`` (which get the prior's
        covariance). The prior is the model's few-shot prior (:meth:`few_shot_prior`);
        ``prior_precision`` replaces it by an isotropic one of that strength. It must be
        positive (it makes the Hessian invertible, see :mod:`lore_rm.fit.posterior`).
        ``hessian`` is ``"gauss-newton"`` (the default) or ``"exact"``.

        The result predicts under itself: ``post.reward(e, users)`` (rewards and their std),
        ``post.proba(comparisons)``, ``post.select_questions(candidates, n)``.
        """
        self._require_fitted()
        if prior_precision is None:
            lam_matrix = self.few_shot_prior().precision
        else:
            lam_matrix = isotropic_prior(
                self.population_weights_, prior_precision, self.weight_space_
            ).precision
        lam = float(torch.linalg.eigvalsh(lam_matrix)[0])
        if not lam > 0 or not np.isfinite(lam):
            raise LoreError(
                f"the posterior needs a positive prior precision, got {lam:g} (the 'paper' "
                "recipe fits without a prior): pass prior_precision > 0"
            )
        has_rows = comparisons is not None and comparisons.n > 0
        if has_rows:
            _check_dim(comparisons, self.d_)  # type: ignore[arg-type]
            given = comparisons.counts_per_user().tolist()  # type: ignore[union-attr]
            present = [
                u
                for u, c in zip(comparisons.user_ids, given, strict=True)  # type: ignore[union-attr]
                if c > 0
            ]
        else:
            present = []
        ids = list(dict.fromkeys([*present, *map(str, users)]))
        w, _ = self.weights_for(ids, unknown=unknown, personalization=1.0)
        k = self.n_components_
        if has_rows:
            data = comparisons.with_user_ids(ids)  # type: ignore[union-attr]
            z = data.project(self.basis_.to(data.device, torch.float64)).cpu()
            index = data.user_index.cpu()
            h = logit_hessian(
                z, w, index, self.scale_, lam_matrix, hessian=hessian, space=self.weight_space_
            )
            counts = torch.bincount(index, minlength=len(ids))
        else:
            empty = torch.zeros(0, dtype=torch.int64)
            h = logit_hessian(torch.zeros(0, k), w, empty, 1.0, lam_matrix)
            counts = torch.zeros(len(ids), dtype=torch.int64)
        cov = covariance_from_hessian(h, lam, hessian)
        return LaplacePosterior(
            ids, w, cov, counts, lam_matrix, hessian, self.weight_space_, model=self
        )

    def select_questions(
        self,
        candidates: Comparisons,
        n: int,
        *,
        posterior: WeightsPosterior | None = None,
        criterion: str = "information",
        seed: int = 0,
        duplicate_tol: float = DUPLICATE_TOL,
        asked: Comparisons | None = None,
    ) -> QuestionSelection:
        """Up to ``n`` rows of ``candidates`` per user, in the order to ask them.

        ``candidates`` are unlabelled pairs (orientation ignored), each for its row's user.
        ``criterion`` is ``"information"`` (D-optimal greedy, the default),
        ``"uncertainty"`` or ``"random"`` (seeded by ``seed``); see
        :mod:`lore_rm.fit.active`. Without a ``posterior`` every user's logits get the
        prior's covariance around their current weights (the population's for unknown
        users). ``asked``: questions already asked; their near-duplicates are skipped. The
        result covers every id of ``candidates.user_ids``.
        """
        self._require_fitted()
        _check_dim(candidates, self.d_)
        users = list(candidates.user_ids)
        if posterior is None:
            posterior = self.weights_posterior(users=users, unknown="mean")
        w, known = self.weights_for(users, unknown="mean", personalization=1.0)
        cov = self._row_covariances(users, known, posterior)
        data = candidates.to(dtype=torch.float32, keep_low_precision=True)
        basis = self.basis_.to(data.device)
        z = data.project_for_scoring(basis)
        done = None
        if asked is not None and asked.n:
            _check_dim(asked, self.d_)
            pos = {u: i for i, u in enumerate(users)}
            remap = torch.tensor([pos.get(u, -1) for u in asked.user_ids], dtype=torch.int64)
            index = remap[asked.user_index.cpu()]  # users without candidates drop out
            old = asked.subset((index >= 0).to(asked.device)).to(
                dtype=torch.float32, keep_low_precision=True
            )
            done = (old.project_for_scoring(basis), index[index >= 0])
        rows, scores = select(
            z,
            data.user_index,
            w,
            cov,
            n,
            scale=self.scale_,
            criterion=criterion,
            space=self.weight_space_,
            generator=torch.Generator().manual_seed(seed),
            duplicate_tol=duplicate_tol,
            asked=done,
        )
        return QuestionSelection(users, rows, scores, criterion)

    def _row_covariances(
        self, users: list, known: Tensor, posterior: WeightsPosterior | None
    ) -> Tensor:
        """Logit covariance (M, K, K) of each user: the posterior's, or the prior's for
        users the model does not know (they have no comparisons)."""
        if posterior is None:
            raise LoreError("return_std needs a posterior: pass posterior=weights_posterior(...)")
        if posterior.weights.shape[1] != self.n_components_:
            raise DataError(
                f"the posterior has K = {posterior.weights.shape[1]} but the model has "
                f"K = {self.n_components_}"
            )
        rows = posterior.rows(users)
        missing = (rows < 0) & known
        if bool(missing.any()):
            bad = users[int(missing.nonzero()[0])]
            raise UnknownUserError(
                f"user {bad!r} is not in the posterior: pass the comparisons their weights "
                "were fitted on to weights_posterior()"
            )
        cov = posterior.prior_covariance().expand(len(users), -1, -1).clone()
        found = rows >= 0
        if bool(found.any()):
            cov[found] = posterior.covariance[rows[found]]
        return cov

    def accuracy_per_user(self, comparisons: Comparisons, **kw) -> dict[str, float]:
        """Pairwise accuracy of each user with comparisons (a tie counts as wrong)."""
        acc = per_user_accuracy(self.margins(comparisons, **kw), comparisons)
        return {u: float(a) for u, a in zip(comparisons.user_ids, acc, strict=True) if a == a}

    def score(self, comparisons: Comparisons, **kw) -> float:
        """Mean over users of per-user pairwise accuracy."""
        return mean_accuracy(self.margins(comparisons, **kw), comparisons)[0]

    def copy(self) -> LowRankReward:
        return copy.deepcopy(self)

    # ---- persistence (lore_rm.fit.persistence) --------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``users.json`` and ``README.md``."""
        self._require_fitted()
        return save_model(self, path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu") -> LowRankReward:
        """The model saved in folder ``path`` by :meth:`save_pretrained`."""
        return load_model(cls.from_arrays, path, device)


@dataclass(frozen=True)
class LaplacePosterior(WeightsPosterior):
    """A :class:`~lore_rm.fit.posterior.WeightsPosterior` that predicts under itself, with
    the model it came from (:meth:`LowRankReward.weights_posterior`): the same numbers as the
    model's methods given ``posterior=`` this object."""

    model: LowRankReward | None = field(default=None, repr=False, compare=False, kw_only=True)

    def _model(self) -> LowRankReward:
        if self.model is None:
            raise LoreError("this posterior has no model: use LowRankReward.weights_posterior")
        return self.model

    def reward(
        self,
        embeddings,
        users: str | Sequence[str | None],
        *,
        unknown: str = "error",
        personalization: Strength = None,
    ) -> tuple[Tensor, Tensor]:
        """Rewards (M,) and their std (M,) under this posterior (:meth:`LowRankReward.reward`
        with ``return_std=True``)."""
        return self._model().reward(
            embeddings,
            users,
            unknown=unknown,
            return_std=True,
            posterior=self,
            personalization=personalization,
        )

    def proba(
        self, comparisons: Comparisons, *, unknown: str = "error", personalization: Strength = None
    ) -> Tensor:
        """P(chosen preferred) of every comparison averaged over this posterior (probit;
        :meth:`LowRankReward.predict_proba`)."""
        return self._model().predict_proba(
            comparisons, posterior=self, unknown=unknown, personalization=personalization
        )

    def select_questions(self, candidates: Comparisons, n: int, **kw) -> QuestionSelection:
        """The questions to ask these users next (:meth:`LowRankReward.select_questions`;
        ``criterion``, ``seed``, ``duplicate_tol``, ``asked`` as there)."""
        return self._model().select_questions(candidates, n, posterior=self, **kw)


def _warn_rank_against_users(rank: int | str, comparisons: Comparisons) -> None:
    """A given rank of at least the number of seen users: a column per user, or more."""
    if rank == AUTO or int(rank) < 2:
        return
    n_users = int((comparisons.counts_per_user() > 0).sum())
    if int(rank) >= n_users:
        warnings.warn(
            f"rank {rank} is at least the number of seen users ({n_users}): the basis can give "
            "every user a column of their own and fit their noise; rank='auto' chooses among "
            "smaller ranks by cross-validation",
            stacklevel=4,
        )


def _check_nonempty(c: Comparisons, what: str) -> None:
    if c.n == 0:
        raise DataError(f"cannot {what} on an empty set of comparisons")


def _check_dim(c: Comparisons, d: int) -> None:
    if c.d != d:
        raise DataError(f"comparisons have d = {c.d} but the model was fitted on d = {d}")


def _as_reference(ref, d: int) -> Tensor | None:
    if ref is None:
        return None
    t = torch.as_tensor(ref, dtype=torch.float32).flatten()
    if t.numel() != d:
        raise DataError(f"reference_head has {t.numel()} entries but embeddings have d = {d}")
    if not torch.isfinite(t).all():
        raise DataError("reference_head holds NaN or inf")
    return t.cpu()
