"""``--config FILE``: rerun a command from the ``config.json`` it wrote beside its report.

Each parameter the file records takes the file's value unless it is given on the command
line (the command line wins, option by option, as with TRL's config files); the fit settings
the file records are the defaults of the generated fit flags. What the file records that
describes the run rather than asks for it (the backbone found, notes, the thread count of
that machine) is not read.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer

from lore_rm.errors import LoreError

#: the parameters a recorded value sets, by name
Sets = Callable[[Any], dict[str, Any]]


def to(name: str, convert: Callable[[Any], Any] | None = None) -> Sets:
    """A recorded value that sets parameter ``name`` (converted by ``convert``)."""
    return lambda value: {name: value if convert is None else convert(value)}


def as_list_text(value: Any) -> str:
    """A recorded list (ranks, shots, ...) as the comma-separated text the option reads."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def read_config(path: Path, command: str) -> dict[str, Any]:
    """The ``config.json`` that ``lore COMMAND`` wrote; a one-line error naming the file when
    it is not one."""
    try:
        record = json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        raise LoreError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoreError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(record, dict) or record.get("command") != command:
        found = record.get("command") if isinstance(record, dict) else None
        raise LoreError(
            f"{path}: written by `lore {found}`, not `lore {command}` (its 'command' field)"
        )
    return record


def _given(ctx: Any, name: str) -> bool:
    """Whether parameter ``name`` was given on the command line (or its environment), by the
    command's context (typer's: its parameter sources are compared by name)."""
    source = None if ctx is None else ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def config_option(command: str, keys: Mapping[str, Sets]) -> Callable:
    """Decorate ``lore COMMAND``: add ``--config FILE``. ``keys`` maps a recorded key to the
    parameters it sets; the recorded ``settings`` become the defaults of the fit flags (the
    command's ``fit_settings``)."""

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        option = typer.Option(
            None,
            "--config",
            help=f"Rerun from the config.json a `lore {command}` wrote; options given here "
            "override it, one by one.",
        )
        config = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Path | None
        )
        # typer passes the click context to a parameter of this type: it says which options
        # were given on the command line
        context = inspect.Parameter(
            "rerun_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
        )

        @functools.wraps(fn)
        def wrapper(
            *args: Any,
            config: Path | None = None,
            rerun_context: Any = None,
            **kwargs: Any,
        ) -> Any:
            if config is not None:
                record = read_config(config, command)
                for key, sets in keys.items():
                    if record.get(key) is None:
                        continue
                    for name, value in sets(record[key]).items():
                        if not _given(rerun_context, name):
                            kwargs[name] = value
                if "fit_settings" in sig.parameters:
                    recorded = dict(record.get("settings") or {})
                    kwargs["fit_settings"] = {**recorded, **dict(kwargs.get("fit_settings") or {})}
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[*sig.parameters.values(), config, context]
        )
        return wrapper

    return decorate
