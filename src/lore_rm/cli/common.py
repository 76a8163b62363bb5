"""Helpers shared by the subcommands: list parsing, error display."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, NoReturn, TypeVar

import typer

C = TypeVar("C")


def parse_int_list(text: str, what: str = "list") -> list[int]:
    """``"0..6"`` -> 0,1,...,6; ``"1,2,5"`` -> 1,2,5; both may be mixed: ``"0..2,5"``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if ".." in part:
                lo, hi = part.split("..")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise typer.BadParameter(f"{what} must look like '0..6' or '1,2,5', got {text!r}") from None
    if not out:
        raise typer.BadParameter(f"{what} is empty")
    return out


def parse_float_list(text: str, what: str = "list") -> list[float]:
    try:
        out = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not out:
        raise typer.BadParameter(f"{what} is empty")
    return out


def fail(exc: Exception) -> NoReturn:
    """Print an input error in one line, without a traceback, and exit with status 2."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(2)


def config_from(cls: type[C], params: Mapping[str, Any], **extra: Any) -> C:
    """The config dataclass ``cls`` built by keyword from the command parameters that share
    its field names (reordering the dataclass can never swap two values)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in params.items() if k in names}, **extra)
