"""The embedding store's manifest (``DATASET/embeddings/manifest.json``), as the dataset
layout knows it: read and checked here, so that re-preparing a dataset
(:func:`lore_rm.data.writer.carry_embeddings`) can keep a store made from the same texts.
:mod:`lore_rm.embed.store` describes the store and :mod:`lore_rm.embed.runner` fills it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lore_rm.constants import MANIFEST_FILE, STORE_FORMAT, STORE_FORMAT_VERSION
from lore_rm.data.layout import TEXTS_FILE, read_parquet
from lore_rm.dtypes import STORAGE
from lore_rm.errors import DataError
from lore_rm.io import read_format_record


def read_manifest(store: Path) -> dict[str, Any]:
    """The checked manifest of the store folder ``store`` (a one-line DataError when it is
    missing, unreadable or malformed)."""
    path = store / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"{store}: no embedding store ({MANIFEST_FILE} missing); "
            "run `lore embed DATASET --backbone NAME` first"
        )
    record = read_format_record(path, STORE_FORMAT, (STORE_FORMAT_VERSION,))
    check_manifest(path, record)
    return record


def texts_fingerprint(dataset_dir: str | os.PathLike) -> str:
    """sha256 over texts.parquet's messages column (row order included)."""
    table = read_parquet(Path(dataset_dir) / TEXTS_FILE, columns=["messages"])
    h = hashlib.sha256()
    for chunk in table.column("messages").chunks:
        for m in chunk.to_pylist():
            h.update(m.encode())
            h.update(b"\x00")
    return h.hexdigest()


def backbone_digest(backbone: dict[str, Any]) -> str:
    """sha256 of a manifest's backbone record (keys sorted): ``backbone_sha256``."""
    return hashlib.sha256(json.dumps(backbone, sort_keys=True).encode()).hexdigest()


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_manifest(path: Path, man: dict[str, Any]) -> None:
    """A one-line :class:`DataError` naming ``path`` and the field when the manifest lacks a
    field a read needs or holds one of the wrong type, or when some shard entries record a
    sha256 and others do not (one without it would load unchecked)."""

    def bad(field: str, expected: str) -> DataError:
        value = man.get(field) if "[" not in field else None
        shown = f" is {value!r}," if "[" not in field else ""
        return DataError(f"{path}: {field}{shown} expected {expected}")

    if not isinstance(man.get("backbone"), dict):
        raise bad("backbone", "an object")
    digest = man.get("backbone_sha256")
    if digest is not None and digest != backbone_digest(man["backbone"]):
        raise DataError(
            f"{path}: backbone differs from the record the embeddings were written with "
            "(backbone_sha256): the manifest was edited; these embeddings are the backbone's "
            "that made them, whatever its name says"
        )
    for field in ("d", "count", "shard_size", "n_shards"):
        if field not in man:
            raise DataError(f"{path}: no {field}")
        if not _is_count(man[field]) or (field in ("d", "shard_size") and not man[field]):
            raise bad(
                field, "a positive integer" if field in ("d", "shard_size") else "an integer >= 0"
            )
    if man.get("dtype", "float32") not in STORAGE:
        raise bad("dtype", " or ".join(STORAGE))
    shards = man.get("shards")
    if not isinstance(shards, list):
        raise DataError(f"{path}: shards is {shards!r}, expected a list of shard entries")
    for i, e in enumerate(shards):
        if not (
            isinstance(e, dict)
            and isinstance(e.get("file"), str)
            and _is_count(e.get("start"))
            and _is_count(e.get("stop"))
            and e["start"] <= e["stop"]
        ):
            raise DataError(f"{path}: shards[{i}] is not {{file, start <= stop, ...}}: {e!r:.200}")
        digest = e.get("sha256")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
            raise DataError(f"{path}: shards[{i}].sha256 is {digest!r}, expected a hex digest")
    with_digest = [e.get("sha256") is not None for e in shards]
    if any(with_digest) and not all(with_digest):
        i = with_digest.index(False)
        raise DataError(
            f"{path}: shards[{i}] ({shards[i]['file']}) records no sha256 but other shards do: "
            "it would load unchecked; the manifest was edited or damaged"
        )
