"""Helpers shared by the subcommands: list parsing, error display."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer

C = TypeVar("C")
P = ParamSpec("P")
R = TypeVar("R")


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


def print_error(exc: Exception) -> None:
    """``error: MESSAGE`` on stderr, one line."""
    from rich.console import Console
    from rich.markup import escape

    text = getattr(exc, "cli_message", None) or str(exc)
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(text)}")


def fail(exc: Exception) -> NoReturn:
    """Print an input error in one line, without a traceback, and exit with status 2."""
    print_error(exc)
    raise typer.Exit(2)


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command: a :class:`~lore_rm.errors.LoreError` raised anywhere in it (bad
    input, a refused file or setting) ends it in one ``error:`` line, exit 2 (:func:`fail`),
    never a traceback. What the command wrote before stays as it was: the library writes
    atomically."""
    from lore_rm.errors import LoreError

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except LoreError as exc:
            fail(exc)

    wrapper.one_line_errors = True  # type: ignore[attr-defined]
    return wrapper


MAX_LENGTH_HELP = (
    "Token cap; longer texts keep their end. The backbone's own cap applies when it is lower "
    "(minilm: 256; a transformers model: its max_position_embeddings)."
)

CACHE_HELP = (
    "Folder of the embedding cache shared by every dataset and command: a text already "
    "embedded by the same backbone (same weights and settings) is read, not embedded again."
)

JSON_HELP = "Print a machine-readable summary (JSON) on stdout; the human lines go to stderr."


def print_json(obj: Any) -> None:
    """``obj`` as indented, strict JSON on stdout: NaN and inf become null."""
    from lore_rm.evaluate.report import json_default

    plain = json.loads(json.dumps(obj, default=json_default))
    typer.echo(json.dumps(_finite(plain), indent=2, allow_nan=False))


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collect the messages of the warnings raised inside (each once, in order) into the
    yielded list; afterwards each is printed on stderr as one ``warning:`` line."""
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            yield messages
    finally:
        for w in caught:
            text = str(w.message)
            if text not in messages:
                messages.append(text)
        _warn_lines(messages)


def _warn_lines(messages: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, soft_wrap=True)
    for text in messages:
        console.print(f"[yellow]warning:[/yellow] {escape(text)}")


def config_from(cls: type[C], params: Mapping[str, Any], **extra: Any) -> C:
    """The config dataclass ``cls`` built by keyword from the command parameters that share
    its field names (reordering the dataclass can never swap two values)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in params.items() if k in names}, **extra)


def active_option(default: int):
    """``--active N``: the active-learning sweep's questions per unseen user."""
    return typer.Option(
        default,
        min=0,
        help="Questions per unseen user for the active-learning sweep, picked from their "
        "few-shot pool by expected information gain vs at random (0 = skip).",
    )


ACTIVE_BATCH = typer.Option(
    1, min=1, help="Questions per round of the active sweep (weights refitted after each)."
)


THREADS = typer.Option(
    "auto",
    "--threads",
    help="torch CPU threads: a number, or 'auto': the usable CPUs not already busy (CPUs in "
    "this process's affinity minus the 1-minute load average, rounded down; at least 1, at "
    "most torch's default). Under contention one thread is much faster than two.",
)


def use_threads(spec: str) -> int:
    """Set torch's intra-op threads from ``--threads``; returns the count."""
    import torch

    from lore_rm.threads import pin_threads, resolve_threads

    try:
        n = resolve_threads(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--threads") from None
    torch.set_num_threads(n)
    pin_threads(n)  # the library's threads="auto" keeps the command's count
    return n
