"""Checks that a model folder cannot lie: every field of ``config.json`` has the type and range
a fit can write, the rank agrees with the basis, the weight rows lie where weights live, and
``model.safetensors`` and ``users.json`` are the files that were saved (their sha256 is
recorded in ``config.json``). A folder that fails is refused in one line naming the file and
the field; folders written before the hashes were recorded load without that check.

Called by :func:`lore_rm.fit.persistence.load_model` (:func:`check_config` before anything
is read from the other files, :func:`check_loaded` once the arrays are); :func:`file_hashes`
by ``save_model``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from lore_rm.constants import MODEL_USERS_FILE, MODEL_WEIGHTS_FILE
from lore_rm.errors import LoreError, ModelFormatError
from lore_rm.fit.config import FitConfig

#: the range of ``scale`` and ``margin_scale`` a fit writes (0.01 and 1 are the recipes'
#: scales; the calibration searches margin scales within 1/10 to 10): a value outside it
#: only comes from an edited or corrupted file
SCALE_RANGE = (1e-6, 1e6)
#: how far a weight row may stray from the simplex (float32 rounding of a softmax)
SIMPLEX_TOL = 1e-4
#: the format version that introduced ``margin_scale``
MARGIN_SCALE_SINCE = 4
#: ``config["weights"]``: where user weights live
WEIGHT_SPACES = ("simplex", "signed")
#: the files whose sha256 ``config["sha256"]`` records
HASHED = (MODEL_WEIGHTS_FILE, MODEL_USERS_FILE)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the folder's weights and user ids, for ``config.json``."""
    return {name: sha256_of(folder / name) for name in HASHED if (folder / name).is_file()}


def check_config(cfg_path: Path, config: dict) -> None:
    """Every field the model is built from has a type and value a fit writes."""

    def bad(field: str, value: Any, expected: str) -> ModelFormatError:
        return ModelFormatError(f"{cfg_path}: {field} is {value!r}, expected {expected}")

    version = config["format_version"]
    for field in ("rank", "scale", "recipe", "fit_config"):
        if field not in config:
            raise ModelFormatError(f"{cfg_path}: no {field}")
    if "margin_scale" not in config and version >= MARGIN_SCALE_SINCE:
        raise ModelFormatError(f"{cfg_path}: no margin_scale (format version {version} records it)")
    if version == 1 and not isinstance(config.get("users"), list):
        raise bad("users", config.get("users"), "a list of user ids (format version 1)")
    rank = config["rank"]
    if not _is_int(rank) or rank < 0:
        raise bad("rank", rank, "an integer >= 0")
    lo, hi = SCALE_RANGE
    for field in ("scale", "margin_scale"):
        if field not in config:
            continue
        value = config[field]
        if not _is_number(value) or not math.isfinite(value) or not lo <= value <= hi:
            raise bad(field, value, f"a number in [{lo:g}, {hi:g}]")
    strength = config.get("personalization", 1.0)
    if not _is_number(strength) or not 0.0 <= strength <= 1.0:
        raise bad("personalization", strength, "a number in [0, 1]")
    for field in ("d", "n_components", "n_users", "seed"):
        if field in config and not (_is_int(config[field]) and config[field] >= 0):
            raise bad(field, config[field], "an integer >= 0")
    if config.get("backbone") is not None and not isinstance(config["backbone"], str):
        raise bad("backbone", config["backbone"], "a string or null")
    space = config.get("weights", "simplex")
    if space not in WEIGHT_SPACES:
        raise bad("weights", space, " or ".join(map(repr, WEIGHT_SPACES)))
    settings = config.get("settings", {})
    if not isinstance(settings, dict):
        raise bad("settings", settings, "an object")
    if not isinstance(config["fit_config"], dict):
        raise bad("fit_config", config["fit_config"], "an object")
    try:
        FitConfig.for_recipe(config["recipe"], seed=config.get("seed", 0), **settings)
    except (LoreError, TypeError) as exc:
        raise ModelFormatError(f"{cfg_path}: recipe / settings: {exc}") from None
    try:
        FitConfig.from_dict(config["fit_config"]).validate()
    except (LoreError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{cfg_path}: fit_config: {exc}") from None
    hashes = config.get("sha256", {})
    if not isinstance(hashes, dict) or not all(
        isinstance(v, str) and len(v) == 64 for v in hashes.values()
    ):
        raise bad("sha256", hashes, "an object of file names and sha256 hex digests")


def check_loaded(cfg_path: Path, config: dict, wpath: Path, tensors: dict[str, Any]) -> None:
    """:func:`check_arrays`, then :func:`check_hashes` (the arrays' own checks name a
    structural problem more precisely than a changed hash would)."""
    check_arrays(cfg_path, config, wpath, tensors)
    check_hashes(cfg_path, config)


def check_arrays(cfg_path: Path, config: dict, wpath: Path, tensors: dict[str, Any]) -> None:
    """The rank agrees with the basis, and the weight rows (each user's and the
    population's) lie on the simplex (``config["weights"]`` absent or ``"simplex"``; after
    pruning, on the part of it the pruned columns leave) or are finite (``"signed"``)."""
    rank, k = config["rank"], int(tensors["basis"].shape[1])
    if rank == 0 and k:
        raise ModelFormatError(
            f"{cfg_path}: rank is 0 (the reference head) but {wpath.name} holds a {k}-column basis"
        )
    if rank and not k:
        raise ModelFormatError(f"{cfg_path}: rank is {rank} but {wpath.name} holds no basis")
    prune = config["fit_config"].get("prune_threshold")
    if k > rank or (k < rank and not prune):
        why = "" if k > rank else " and the fit prunes no columns (prune_threshold is null)"
        raise ModelFormatError(
            f"{cfg_path}: rank is {rank} but {wpath.name} holds a {k}-column basis{why}"
        )
    if not k or config.get("weights", "simplex") == "signed":
        return  # finite: checked with every tensor
    least = 1.0 - (float(prune) * (rank - k) if k < rank else 0.0) - SIMPLEX_TOL
    for name in ("user_weights", "population_weights"):
        w = tensors[name].double().reshape(-1, k)
        if not w.shape[0]:
            continue
        mass = w.sum(dim=1)
        low = w.min(dim=1).values < -SIMPLEX_TOL
        off = low | (mass > 1.0 + SIMPLEX_TOL) | (mass < least)
        if bool(off.any()):
            row = int(torch.nonzero(off)[0])
            raise ModelFormatError(
                f"{wpath}: {name} row {row} is off the simplex (sum {float(mass[row]):.6g}, "
                f"smallest {float(w[row].min()):.6g}); config.json's weights is "
                f"{config.get('weights', 'simplex')!r}"
            )


def check_hashes(cfg_path: Path, config: dict) -> None:
    """The weights and user-id files are the ones whose sha256 ``config.json`` recorded (a
    flipped bit, or ids swapped between users, changes it). Format 1 keeps its ids in
    ``config.json`` itself."""
    for name, want in config.get("sha256", {}).items():
        if name == MODEL_USERS_FILE and config["format_version"] == 1:
            continue
        path = cfg_path.parent / name
        if not path.is_file():
            raise ModelFormatError(f"{cfg_path.parent}: no {name}")
        got = sha256_of(path)
        if got != want:
            raise ModelFormatError(
                f"{path}: sha256 {got[:16]}... differs from the {want[:16]}... that "
                f"{cfg_path.name}'s sha256 records: the file changed after it was saved"
            )
