"""Command-line options generated from :class:`~lore_rm.fit.config.FitConfig`.

Every field becomes ``--field-name`` (help from the field's metadata, default: the recipe's);
values are read by the field's rule (:func:`lore_rm.constraints.parse`) and then validated by
``FitConfig.for_recipe``, so a bad value is one ``LoreError`` line, never a silent fallback.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import Field, fields
from typing import Any

import typer

from lore_rm.constraints import parse, rule_of
from lore_rm.errors import LoreError
from lore_rm.fit.config import FitConfig

PANEL = "Fit settings (FitConfig; default: the recipe's)"


def _flag(f: Field) -> str:
    return "--" + f.name.replace("_", "-")


def parse_setting(f: Field, raw: str) -> Any:
    """``raw`` read by the rule of field ``f`` (validated later, with the whole config)."""
    return parse(_flag(f), raw, rule_of(f))


def fit_options(exclude: Iterable[str] = ("recipe", "seed")) -> Callable:
    """Decorate a command: add an option per FitConfig field; the command receives the
    given ones as ``fit_settings`` (a dict of field name -> value)."""
    skip = set(exclude)
    chosen = [f for f in fields(FitConfig) if f.name not in skip]

    def decorate(command: Callable) -> Callable:
        sig = inspect.signature(command)
        params = [p for p in sig.parameters.values() if p.name != "fit_settings"]
        for f in chosen:
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            help_text = f"{f.metadata.get('help', '')} [default: {shown}]"
            option = typer.Option(None, _flag(f), help=help_text, rich_help_panel=PANEL)
            params.append(
                inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str | None
                )
            )

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from lore_rm.cli.common import fail

            raw = {f: kwargs.pop(f.name, None) for f in chosen}
            try:
                settings = {f.name: parse_setting(f, v) for f, v in raw.items() if v is not None}
            except LoreError as exc:
                fail(exc)
            return command(*args, fit_settings=settings, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return decorate
