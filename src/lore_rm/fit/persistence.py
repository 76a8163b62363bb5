"""A model folder: ``config.json``, ``model.safetensors``, ``users.json`` and a model card.

Format version 5 adds ``weights`` (the users' weight space, ``"simplex"`` or ``"signed"``,
:mod:`lore_rm.fit.link`) and ``personalization`` (the strength in [0, 1] at which users' own
weights are used, chosen by the cross-validation) to ``config.json``; earlier folders read
as simplex weights at strength 1.
Format version 4 adds ``margin_scale`` to ``config.json`` (the cross-validated calibration of
every output, :mod:`lore_rm.fit.calibration`); earlier folders read as 1. Version 3 adds the
learned few-shot prior (``prior_mean`` (K,) and ``prior_precision`` (K, K) in
``model.safetensors``, when the fit learned one); folders without it personalise new users
under the isotropic prior their settings name. Version 2 keeps the user ids in ``users.json``
(one JSON list, in weight-row order) and records the lore-rm version that wrote the folder;
version 1 folders (user ids inside ``config.json``) are still read. Rank 0 is stored as an
empty basis next to the reference head, as it always was; in memory the reference head is the
one-column basis.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors.torch import save_file

from lore_rm.constants import (
    MODEL_CARD_FILE,
    MODEL_CONFIG_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    MODEL_FORMAT_VERSIONS_READ,
    MODEL_USERS_FILE,
    MODEL_WEIGHTS_FILE,
)
from lore_rm.errors import ModelFormatError
from lore_rm.fit.config import FitConfig
from lore_rm.fit.folder_checks import check_config, check_loaded, file_hashes
from lore_rm.fit.history import FitHistory
from lore_rm.fit.prior import LogitPrior
from lore_rm.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_format_record,
    read_tensors,
)
from lore_rm.version import __version__
from lore_rm.wording import counted

Tensor = torch.Tensor
M = TypeVar("M")


class SavedModel(Protocol):
    """What a model folder is written from: a fitted
    :class:`~lore_rm.fit.model.LowRankReward` (its Attributes)."""

    @property
    def rank(self) -> int | str: ...
    @property
    def recipe(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def backbone(self) -> str | None: ...
    @property
    def settings(self) -> dict[str, Any]: ...
    @property
    def rank_(self) -> int: ...
    @property
    def d_(self) -> int: ...
    @property
    def n_components_(self) -> int: ...
    @property
    def scale_(self) -> float: ...
    @property
    def margin_scale_(self) -> float: ...
    @property
    def personalization_(self) -> float: ...
    @property
    def personalizes(self) -> bool: ...
    @property
    def weight_space_(self) -> str: ...
    @property
    def users_(self) -> list[str]: ...
    @property
    def basis_(self) -> Tensor: ...
    @property
    def user_weights_(self) -> Tensor: ...
    @property
    def population_weights_(self) -> Tensor: ...
    @property
    def reference_head_(self) -> Tensor | None: ...
    @property
    def prior_(self) -> LogitPrior | None: ...
    @property
    def config_(self) -> FitConfig: ...
    @property
    def history_(self) -> FitHistory: ...


def save_model(model: SavedModel, path: str | os.PathLike) -> Path:
    """Write the model folder ``path`` (created if needed); each file is written atomically."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _file_tensors(model)
    if model.reference_head_ is not None:
        tensors["reference_head"] = model.reference_head_.contiguous()
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "lore_rm_version": __version__,
        "rank": model.rank_,
        "requested_rank": model.rank,
        "n_components": int(tensors["basis"].shape[1]),
        "d": model.d_,
        "scale": model.scale_,
        "margin_scale": model.margin_scale_,
        "personalization": model.personalization_,
        "weights": model.weight_space_,
        "recipe": model.recipe,
        "seed": model.seed,
        "backbone": model.backbone,
        "settings": model.settings,
        "fit_config": model.config_.to_dict(),
        "n_users": len(model.users_),
    }
    atomic_write(out / MODEL_WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    atomic_write_json(out / MODEL_USERS_FILE, list(model.users_))
    config["sha256"] = file_hashes(out)
    atomic_write_json(out / MODEL_CONFIG_FILE, config)
    atomic_write_text(out / MODEL_CARD_FILE, _model_card(model))
    return out


def load_model(build: Callable[..., M], path: str | os.PathLike, device: str) -> M:
    """The model saved in folder ``path`` (format version 1 to 5), made by ``build`` (the
    model class's ``from_arrays``) from the folder's arrays and fields."""
    folder = Path(path)
    cfg_path = folder / MODEL_CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelFormatError(f"{folder}: no {MODEL_CONFIG_FILE}; not a lore-rm model folder")
    config = read_format_record(
        cfg_path, MODEL_FORMAT, MODEL_FORMAT_VERSIONS_READ, error=ModelFormatError
    )
    check_config(cfg_path, config)
    wpath = folder / MODEL_WEIGHTS_FILE
    if not wpath.is_file():
        raise ModelFormatError(f"{folder}: no {MODEL_WEIGHTS_FILE}")
    users = _read_users(folder, config)
    tensors = read_tensors(wpath, error=ModelFormatError)
    _check_folder(cfg_path, config, wpath, tensors, folder / MODEL_USERS_FILE, users)
    check_loaded(cfg_path, config, wpath, tensors)
    basis, weights, population = (
        tensors["basis"],
        tensors["user_weights"],
        tensors["population_weights"],
    )
    if config["rank"] == 0:  # saved as an empty basis: the reference head as data
        if "reference_head" not in tensors:
            raise ModelFormatError(f"{folder}: a rank-0 model without a reference head")
        basis = tensors["reference_head"].flatten()[:, None]
        weights = torch.ones(weights.shape[0], 1)
        population = torch.ones(1)
    space = config.get("weights", "simplex")
    prior = None
    if "prior_mean" in tensors:
        prior = LogitPrior(
            tensors["prior_mean"].double(), tensors["prior_precision"].double(), "learned", space
        )
    return build(
        basis,
        weights,
        users,
        scale=config["scale"],
        margin_scale=config.get("margin_scale", 1.0),
        strength=config.get("personalization", 1.0),
        weight_space=space,
        population_weights=population,
        reference_head=tensors.get("reference_head"),
        rank=config["rank"],
        recipe=config["recipe"],
        backbone=config.get("backbone"),
        device=device,
        seed=config.get("seed", 0),
        fit_config=FitConfig.from_dict(config["fit_config"]),
        prior=prior,
        **config.get("settings", {}),
    )


def _check_folder(
    cfg_path: Path, config: dict, wpath: Path, tensors: dict, upath: Path, users: list[str]
) -> None:
    """Every array and field the model is built from agrees with the others, so a tampered
    or mixed-up folder is refused here, in one line naming the file and the field."""
    for name in ("basis", "user_weights", "population_weights"):
        if name not in tensors:
            raise ModelFormatError(f"{wpath}: no {name} tensor")
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise ModelFormatError(f"{wpath}: {name} is {t.dtype}, expected torch.float32")
        if not bool(torch.isfinite(t).all()):
            raise ModelFormatError(f"{wpath}: {name} holds NaN or inf")
    basis, weights, population = (
        tensors["basis"],
        tensors["user_weights"],
        tensors["population_weights"],
    )
    if basis.ndim != 2:
        raise ModelFormatError(f"{wpath}: basis has shape {tuple(basis.shape)}, expected (d, K)")
    d, k = basis.shape
    if weights.ndim != 2 or weights.shape[1] != k:
        raise ModelFormatError(
            f"{wpath}: user_weights has shape {tuple(weights.shape)}, expected (n_users, {k}) "
            f"for a {k}-column basis"
        )
    if weights.shape[0] != len(users):
        raise ModelFormatError(
            f"{wpath}: user_weights has {weights.shape[0]} weight rows but {len(users)} users"
        )
    if tuple(population.shape) != (k,):
        raise ModelFormatError(
            f"{wpath}: population_weights has shape {tuple(population.shape)}, expected ({k},) "
            f"for a {k}-column basis"
        )
    _check_prior(wpath, tensors, k)
    ref = tensors.get("reference_head")
    if ref is not None and ref.numel() != d:
        raise ModelFormatError(
            f"{wpath}: reference_head has {ref.numel()} values but the basis has d = {d} rows"
        )
    if len(set(users)) != len(users):
        dup = next(u for u, n in Counter(users).items() if n > 1)
        where = cfg_path if config["format_version"] == 1 else upath
        raise ModelFormatError(f"{where}: user id {dup!r} appears more than once")
    for field, want in (("d", d), ("n_components", k), ("n_users", len(users))):
        if field in config and config[field] != want:
            raise ModelFormatError(
                f"{cfg_path}: {field} is {config[field]!r} but {wpath.name} holds {want}"
            )
    rank = config.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ModelFormatError(f"{cfg_path}: rank is {rank!r}, expected an integer >= 0")
    scale = config.get("scale")
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale == scale:
        raise ModelFormatError(f"{cfg_path}: scale is {scale!r}, expected a number")
    space = config.get("weights", "simplex")
    if space not in ("simplex", "signed"):
        raise ModelFormatError(f"{cfg_path}: weights is {space!r}, expected 'simplex' or 'signed'")
    lam = config.get("personalization", 1.0)
    if not isinstance(lam, int | float) or isinstance(lam, bool) or not 0.0 <= lam <= 1.0:
        raise ModelFormatError(
            f"{cfg_path}: personalization is {lam!r}, expected a number in [0, 1]"
        )


def _check_prior(wpath: Path, tensors: dict, k: int) -> None:
    """The learned prior, when there is one: both arrays, K-sized, a symmetric positive
    definite precision."""
    mean, precision = tensors.get("prior_mean"), tensors.get("prior_precision")
    if mean is None and precision is None:
        return
    if mean is None or precision is None:
        missing = "prior_mean" if mean is None else "prior_precision"
        raise ModelFormatError(f"{wpath}: a learned prior without {missing}")
    if tuple(mean.shape) != (k,) or tuple(precision.shape) != (k, k):
        raise ModelFormatError(
            f"{wpath}: prior_mean {tuple(mean.shape)} / prior_precision "
            f"{tuple(precision.shape)}, expected ({k},) / ({k}, {k}) for a {k}-column basis"
        )
    p = precision.double()
    symmetric = bool(torch.allclose(p, p.T, rtol=1e-4, atol=1e-6))
    if not symmetric or not float(torch.linalg.eigvalsh(0.5 * (p + p.T))[0]) > 0:
        raise ModelFormatError(f"{wpath}: prior_precision is not symmetric positive definite")


def _read_users(folder: Path, config: dict) -> list[str]:
    if config["format_version"] == 1:
        return [str(u) for u in config["users"]]
    upath = folder / MODEL_USERS_FILE
    if not upath.is_file():
        raise ModelFormatError(f"{folder}: no {MODEL_USERS_FILE}")
    try:
        users = json.loads(upath.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{upath}: not valid JSON ({exc})") from None
    if not isinstance(users, list):
        raise ModelFormatError(f"{upath}: expected a JSON list of user ids")
    return [str(u) for u in users]


def _file_tensors(m: SavedModel) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors``; rank 0 is stored as an empty basis."""
    k = 0 if m.rank_ == 0 else m.n_components_
    tensors = {
        "basis": m.basis_[:, :k].contiguous(),
        "user_weights": m.user_weights_[:, :k].contiguous(),
        "population_weights": m.population_weights_[:k].contiguous(),
    }
    prior = m.prior_
    if prior is not None and k and prior.k == k:
        tensors["prior_mean"] = prior.mean.float().contiguous()
        tensors["prior_precision"] = prior.precision.float().contiguous()
    return tensors


def _model_card(m: SavedModel) -> str:
    return (
        "# lore-rm personalised reward model\n\n"
        f"- backbone: `{m.backbone or 'unspecified'}` (frozen; this folder holds only the head)\n"
        f"- rank K = {m.rank_} ({0 if m.rank_ == 0 else m.n_components_} basis columns kept), "
        f"d = {m.d_}, "
        f"scale = {m.scale_}, margin_scale = {m.margin_scale_:g}\n"
        f"- users: {len(m.users_)}; recipe: {m.recipe}; written by lore-rm {__version__}\n\n"
        "Reward of user u for embedding e: `margin_scale * scale * e @ basis @ "
        "user_weights[u]` (rank 0: `e @ reference_head`).\n" + _calibration_card(m.history_) + "\n"
        "```python\nfrom lore_rm import LowRankReward\n"
        "model = LowRankReward.from_pretrained('THIS_FOLDER')\n```\n"
        + _personalization_card(m)
        + _selection_card(m.history_)
        + _prior_card(m.history_)
        + (m.history_.get("population") or {}).get("card", "")
    )


def _personalization_card(m: SavedModel) -> str:
    """Whether and how much the model personalises, and what it measured, as Markdown."""
    lines = ["\n## Personalisation\n"]
    space = "signed weights (population mean + a signed offset per user)"
    if m.weight_space_ == "simplex":
        space = "simplex weights (a point of the simplex over the basis columns)"
    if not m.personalizes:
        why = "one reward for everyone"
        if m.rank_ > 1 and m.personalization_ == 0:
            why = "strength 0: users' own weights did not beat the shared ones"
        lines.append(f"This model does not personalise ({why}): every user gets the same reward.")
    else:
        lines.append(
            f"Users get `w_bar + {m.personalization_:g} * (w_u - w_bar)`: their own {space} "
            f"at strength {m.personalization_:g} (0 = the shared weights `w_bar`, 1 = their own)."
        )
    report = m.history_.get("personalization")
    if report:
        lines.append(f"\n{report['summary']}\n")
        lines.append("| group | users | pooled | shared | personal | gain [95% CI] |")
        lines.append("|---|---|---|---|---|---|")
        for g in report["groups"]:
            a, gain = g["accuracy"], g["gain"]
            label = "seen users" if g["group"] == "seen" else f"new users ({g['shots'] or 'all'})"
            lines.append(
                f"| {label} | {g['users']} | {a['pooled']:.3f} | {a['shared']:.3f} | "
                f"{a['personal']:.3f} | {gain['mean']:+.3f} [{gain['lower']:+.3f}, "
                f"{gain['upper']:+.3f}] |"
            )
    return "\n".join(lines) + "\n"


def _calibration_card(history: FitHistory) -> str:
    """Where the margin scale came from, in words (empty when the history does not say)."""
    cal = history.get("calibration")
    if not cal:
        return ""
    if "why" in cal:
        return f"\nThe margins are not calibrated (margin_scale 1): {cal['why']}.\n"
    return (
        f"\nmargin_scale {cal['margin_scale']:g} calibrates rewards, probabilities and their "
        "std: it is the scale at which the users the search held out "
        f"({cal['source']}) find the margins calibrated.\n"
    )


def _prior_card(history: FitHistory) -> str:
    """How new users are personalised: the few-shot prior, as a Markdown section."""
    prior = history.get("prior")
    if not prior:
        return ""
    if prior["kind"] != "learned":
        return (
            f"\n## New users\n\nFitted under an isotropic prior of strength "
            f"{prior['strength']:g} around the population's mean weights ({prior['why']}).\n"
        )
    axes = ", ".join(f"{v:.3g}" for v in prior["axis_std"])
    return (
        "\n## New users\n\nFitted under a prior learned from the "
        f"{counted(prior['users'], 'seen user')} (empirical Bayes, "
        f"{counted(prior['em_iterations'], 'EM iteration')}): a logistic normal whose "
        f"standard deviations along its principal axes are {axes} (logit units).\n"
    )


def _fits_words(sel: dict) -> str:
    """How many fold fits the search ran, and how many it took from an earlier search."""
    reused = int(sel.get("reused_fits", 0))
    more = f" (and {reused} reused from an earlier search over the same data)" if reused else ""
    return f"{sel['n_fits']} fits{more}"


def _holdout_words(sel: dict) -> str:
    """What the folds held out, in words (selections saved before ``holdout`` existed held
    out comparisons)."""
    if sel.get("holdout", "comparisons") == "users":
        return "each fold held out whole users, scored as new users of the fold's basis"
    return "each fold held out a share of every user's comparisons"


def _selection_card(history: FitHistory) -> str:
    """The model-selection curve as a Markdown section (empty when nothing was searched)."""
    sel = history.get("selection")
    if not sel:
        return ""
    lines = [
        "\n## How the rank and ridge were chosen\n",
        f"{sel['folds']}-fold cross-validation over the seen users' comparisons "
        f"({_holdout_words(sel)}), {_fits_words(sel)} in {sel['seconds']:.1f} s, rule: "
        f"{sel['rule']}. Chosen: rank {sel['rank']}, weight_decay {sel['weight_decay']:g}.\n",
        "| rank | weight_decay | CV log-loss | ± se | CV accuracy | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for r in sel["rows"]:
        lines.append(
            f"| {r['rank']} | {r['weight_decay']:g} | {r['cv_loss']:.4f} | "
            f"{r['cv_loss_se']:.4f} | {r['cv_accuracy']:.3f} | {'**yes**' if r['chosen'] else ''} |"
        )
    for problem in history.get("no_signal", []):
        lines.append(f"\n**Warning:** the model may have learned nothing: {problem}.")
    return "\n".join(lines) + "\n"
