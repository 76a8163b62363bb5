"""Is a loaded backbone the one a model was fitted on? ``lore serve`` asks at start-up.

A model folder written by ``lore fit`` records in ``training.json`` the identity of the
backbone its embeddings came from (the embedding store's manifest record: name, revision,
content fingerprint, kind, pooling, dtype, chat template, max_length, d); any other model
folder records only the backbone's name (``config.json``). A backbone of another width can
never serve the model; one of the same width but other weights or another chat template
gives embeddings the basis means nothing over, so it is refused unless forced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lore_rm.constants import TRAINING_FILE
from lore_rm.embed.backbones import backbone_identity, load_backbone
from lore_rm.embed.base import Embedder
from lore_rm.errors import LoreError, ModelFormatError

# compared when both sides record them (the compute dtype and max_length may be overridden)
COMPARED = ("kind", "pooling", "chat_template_sha256")


class BackboneMismatchError(LoreError):
    """A backbone other than the one the model was fitted on."""


def recorded_backbone(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The backbone identity ``lore fit`` recorded in the model's training.json ({} if none)."""
    path = Path(model_dir) / TRAINING_FILE
    if not path.is_file():
        return {}
    try:
        backbone = json.loads(path.read_text("utf-8")).get("backbone")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc})") from None
    return backbone if isinstance(backbone, dict) else {}


def _short(value: Any) -> str:
    text = str(value)
    return text[:23] + "..." if len(text) > 26 else text


def backbone_differences(recorded: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """What differs between the ``recorded`` backbone identity and the ``actual`` one, each
    as ``field X (recorded Y)``. The content fingerprints decide when both have one (a
    moved or copied checkpoint is the same backbone); otherwise name and revision do."""
    diffs = []
    had, has = recorded.get("fingerprint"), actual.get("fingerprint")
    if had and has:
        identity: tuple[str, ...] = ("fingerprint",) if had != has else ()
    else:
        identity = ("name", "revision")
    for field in identity + COMPARED:
        want, got = recorded.get(field), actual.get(field)
        if want is not None and got is not None and want != got:
            diffs.append(f"{field} {_short(got)} (recorded {_short(want)})")
    return diffs


def check_backbone(
    model_dir: str | os.PathLike,
    model_backbone: str | None,
    d: int,
    embedder: Embedder,
    *,
    force: bool = False,
    force_option: str = "--force-backbone",
    verb: str = "serve",
) -> list[str]:
    """Refuse ``embedder`` unless it is the backbone the model in ``model_dir`` was fitted on
    (:func:`backbone_differences` against training.json, else the name ``model_backbone``
    from config.json). A width other than ``d`` is always refused; other differences are
    returned instead when ``force``."""
    return check_identity(
        model_dir, model_backbone, d, backbone_identity(embedder), force=force,
        force_option=force_option, verb=verb,
    )  # fmt: skip


def check_identity(
    model_dir: str | os.PathLike | None,
    model_backbone: str | None,
    d: int,
    actual: dict[str, Any],
    *,
    force: bool = False,
    force_option: str = "--force-backbone",
    verb: str = "serve",
) -> list[str]:
    """:func:`check_backbone` for a backbone identity (a dict of the fields
    :func:`~lore_rm.embed.backbones.backbone_identity` gives). ``model_dir`` None: only the
    name ``model_backbone`` is known; ``verb`` names what the backbone is for in the error."""
    if int(actual["d"]) != int(d):
        raise BackboneMismatchError(
            f"the backbone {actual['name']!r} gives d = {actual['d']} but the model was "
            f"fitted on d = {d}"
        )
    recorded = (recorded_backbone(model_dir) if model_dir is not None else {}) or {
        "name": model_backbone
    }
    diffs = backbone_differences(recorded, actual)
    if diffs and not force:
        what = model_dir if model_dir is not None else "the model"
        raise BackboneMismatchError(
            f"{what} was fitted on the backbone {recorded.get('name')!r}, not on "
            f"{actual['name']!r}: {'; '.join(diffs)}; {verb} it with the backbone it was "
            f"fitted on, or pass {force_option} to use this one anyway"
        )
    return diffs


def resolve_backbone(
    model_dir: str | os.PathLike,
    model_backbone: str | None,
    d: int,
    backbone: str | None = None,
    *,
    dtype: str | None = None,
    max_length: int | None = None,
    force: bool = False,
    verb: str = "serve",
    loader: Callable[..., Embedder] | None = None,
    **settings: Any,
) -> tuple[Embedder, list[str]]:
    """The backbone every command embeds with for the model in ``model_dir``, loaded and
    checked: ``backbone``, else the one the model names (``model_backbone``). ``dtype`` and
    ``max_length`` default to what the model's training embeddings recorded when the backbone
    is that one (``training.json``), else to the loader's defaults, so rewards are computed
    as the fitted ones were. It is refused unless it is the backbone the model was fitted on
    (:func:`check_backbone`; a width other than ``d`` always is); with ``force`` the
    differences are returned instead. ``loader`` defaults to
    :func:`~lore_rm.embed.backbones.load_backbone`; ``settings`` go to it (device, batch
    size, ...)."""
    name = backbone or model_backbone
    if not name:
        raise LoreError(f"{model_dir}: the model names no backbone; pass --backbone")
    recorded = recorded_backbone(model_dir)
    if recorded.get("name") == name:
        if dtype is None and isinstance(recorded.get("dtype"), str):
            dtype = recorded["dtype"]
        count = recorded.get("max_length")
        if max_length is None and isinstance(count, int) and not isinstance(count, bool):
            max_length = count
    for key, value in (("dtype", dtype), ("max_length", max_length)):
        if value is not None:
            settings[key] = value
    embedder = (loader or load_backbone)(name, **settings)
    return embedder, check_backbone(model_dir, model_backbone, d, embedder, force=force, verb=verb)
