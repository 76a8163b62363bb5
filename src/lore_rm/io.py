"""Atomic file and folder writes: a reader never sees a half-written file or folder.

Everything is written under a hidden temporary name beside its target and renamed into place;
on any error the temporary file or folder is removed. Temporary names start with ``.`` and
contain ``.tmp-`` (files) or ``.partial-`` (folders), so a killed run's leftovers are easy to
find and never mistaken for results; the next write of the same folder sweeps them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lore_rm.errors import DataError, OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary path beside ``path``, then rename it.

    The temporary name keeps ``path``'s suffix (writers such as matplotlib pick the format
    from it) and the file gets the permissions of any newly created file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """``obj`` as indented JSON plus a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=2, **dumps_kwargs) + "\n")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _writer_pid(name: str, kind: str) -> int | None:
    """The writer's pid in a leftover's name (``.NAME.{kind}-PID-xxxxxxxx``), or None (an
    ``old`` folder named before pids were recorded)."""
    head = name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
    return int(head) if head.isdigit() and "-" in name.rsplit(f".{kind}-", 1)[1] else None


def sweep_leftovers(out: str | Path) -> None:
    """Remove what killed writers of ``out`` left beside it: ``.NAME.partial-*`` folders whose
    writer is gone; a ``.NAME.old-*`` folder (the previous ``out``, moved aside just before
    the new one was renamed in) goes back to ``out`` when ``out`` is missing, and is removed
    otherwise (only when its writer is gone)."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for kind in ("old", "partial"):
        for p in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = _writer_pid(p.name, kind)
            if pid is not None and _pid_alive(pid):
                continue
            if kind == "old" and not out.exists():
                with contextlib.suppress(OSError):
                    os.replace(p, out)
                    continue
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``.

    On any error the temporary folder (and any parent folders this call created) is removed.
    An existing ``out`` is refused unless ``overwrite``. What killed writers of ``out`` left
    is swept first (:func:`sweep_leftovers`).
    """
    out = Path(out)
    sweep_leftovers(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def read_tensors(
    path: str | Path, *, data: bytes | None = None, error: type[Exception] = DataError
) -> dict:
    """The tensors of the safetensors file ``path`` (or of its bytes ``data``, already read);
    ``error`` naming the file when it is truncated or not a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        return load(data) if data is not None else load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise error(f"{path}: not a readable safetensors file ({first})") from None


def read_format_record(
    path: str | Path,
    fmt: str,
    versions: tuple[int, ...],
    error: type[Exception] = DataError,
) -> dict:
    """The JSON record at ``path`` when its ``format`` is ``fmt`` and its ``format_version`` is
    one of ``versions``; ``error`` naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        found = record.get("format") if isinstance(record, dict) else None
        raise error(f"{path}: format is {found!r}, not {fmt!r}")
    if record.get("format_version") not in versions:
        readable = " or ".join(str(v) for v in versions)
        raise error(
            f"{path}: format version {record.get('format_version')!r}; this lore-rm reads "
            f"version {readable}"
        )
    return record
