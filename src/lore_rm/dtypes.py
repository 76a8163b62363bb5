"""The floating dtypes lore-rm names, in one vocabulary.

Canonical names are torch's (``float32``, ``bfloat16``, ``float16``, ``float64``); the short
names ``fp32``, ``bf16``, ``fp16``, ``fp64`` and a ``torch.`` prefix are read as the same.
Each place takes its own subset: an embedding store keeps :data:`STORAGE` (its shards are
read back into float32 or kept at low precision), a backbone computes in :data:`COMPUTE` (or
``"auto"``: the checkpoint's own), an exported model is saved in any of :data:`DTYPES`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lore_rm.errors import LoreError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}
#: what an embedding store's shards hold
STORAGE = ("float32", "bfloat16", "float16")
#: what a backbone computes in
COMPUTE = ("float32", "bfloat16", "float16")


def canonical(name: str) -> str | None:
    """The canonical name of ``name`` (an alias or a ``torch.``-prefixed name), or None."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = ALIASES.get(key, key)
    return key if key in DTYPES else None


def parse_dtype(
    name: str | torch.dtype,
    *,
    allowed: Iterable[str] = tuple(DTYPES),
    what: str = "dtype",
    also: Iterable[str] = (),
) -> torch.dtype:
    """The torch dtype called ``name``, one of ``allowed`` (canonical names); else a one-line
    :class:`LoreError` naming ``what``, the value and the choices (with the words ``also``
    that the caller accepts besides)."""
    allowed = tuple(allowed)
    key = name_of(name) if isinstance(name, torch.dtype) else canonical(name)
    if key is None or key not in allowed:
        short = {v: k for k, v in ALIASES.items()}
        shown = [f"{a} ({short[a]})" if a in short else a for a in allowed] + list(also)
        raise LoreError(
            f"{what} {name}: not a torch floating dtype lore-rm uses here; use one of "
            + ", ".join(shown)
        )
    return DTYPES[key]


def name_of(dtype: torch.dtype) -> str:
    """The canonical name of a torch dtype (``torch.bfloat16`` -> ``bfloat16``)."""
    return str(dtype).removeprefix("torch.")
