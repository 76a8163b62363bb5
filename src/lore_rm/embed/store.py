"""The embedding store of a dataset folder: sharded, resumable, data-parallel.

This module reads and describes a store; :mod:`lore_rm.embed.runner` fills it.

Layout of ``DATASET/embeddings/``::

    manifest.json                 what the store holds and how it was made (see below)
    shard-00000.safetensors       rows [0, S) of texts.parquet, tensor "embeddings" (rows x d)
    shard-00001.safetensors       rows [S, 2S), ...
    reference_head.safetensors    the backbone's reward direction "reference_head" (d,), when
                                  the backbone has one

``manifest.json``: ``format`` / ``format_version``; ``backbone`` (name, revision, kind,
pooling, compute dtype, chat-template sha256, max_length, d); ``d``; ``dtype`` (storage dtype
of the shards); ``count`` (texts = rows); ``texts_sha256`` (fingerprint of texts.parquet's
messages); ``shard_size``; ``n_shards``; ``shards`` (file, start, stop, bytes of each finished
shard); ``complete``; ``reference_head`` (file name or null) and ``reference_bias``.

Guarantees:

* a shard file exists under its final name only once it is whole (written to a temporary
  name, then renamed); the manifest is replaced atomically the same way;
* a run over an existing store continues where the last stopped: finished shards are never
  recomputed or rewritten, stale temporary files are removed;
* a run whose backbone (or texts, or shard size) differs from the manifest's stops with an
  error naming the differing fields;
* under ``torchrun`` / ``accelerate launch`` rank r embeds shards r, r + W, r + 2W, ... with
  no gathering; rank 0 writes the manifest and completes it once every rank is done.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lore_rm.constants import MANIFEST_FILE, STORE_FORMAT, STORE_FORMAT_VERSION
from lore_rm.data.layout import EMBEDDINGS_DIR, TEXTS_FILE
from lore_rm.errors import DataError, LoreError
from lore_rm.io import atomic_write_json, read_format_record

DEFAULT_SHARD_SIZE = 4096
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Backbone fields that must match for two runs to share a store (batch size and device do
# not change what is computed beyond float rounding).
IDENTITY_FIELDS = (
    "name",
    "revision",
    "kind",
    "pooling",
    "dtype",
    "chat_template_sha256",
    "max_length",
    "d",
)


class StoreMismatchError(LoreError):
    """An existing store was made by another backbone, from other texts, or in other shards."""


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)


def texts_fingerprint(dataset_dir: str | Path) -> str:
    """sha256 over texts.parquet's messages column (row order included)."""
    table = pq.read_table(Path(dataset_dir) / TEXTS_FILE, columns=["messages"])
    h = hashlib.sha256()
    for chunk in table.column("messages").chunks:
        for m in chunk.to_pylist():
            h.update(m.encode())
            h.update(b"\x00")
    return h.hexdigest()


class EmbeddingStore:
    """Read access to a store: ``EmbeddingStore(dataset_or_store_dir).load()``.

    ``path`` may be the dataset folder (the store is its ``embeddings/``) or the store itself.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        p = Path(path)
        if (
            (p / TEXTS_FILE).is_file()
            or not (p / MANIFEST_FILE).exists()
            and (p / EMBEDDINGS_DIR).is_dir()
        ):
            p = p / EMBEDDINGS_DIR
        self.path = p

    # -- state ------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @property
    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise DataError(
                f"{self.path}: no embedding store ({MANIFEST_FILE} missing); "
                "run `lore embed DATASET --backbone NAME` first"
            )
        return read_format_record(self.manifest_path, STORE_FORMAT, (STORE_FORMAT_VERSION,))

    @property
    def is_complete(self) -> bool:
        return self.exists() and bool(self.manifest.get("complete"))

    @property
    def backbone(self) -> dict[str, Any]:
        return dict(self.manifest["backbone"])

    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def finished_shards(self) -> list[int]:
        """Indices of the shards present on disk under their final name (hence whole)."""
        man = self.manifest
        return [i for i in range(man["n_shards"]) if (self.path / shard_file(i)).is_file()]

    # -- reading ----------------------------------------------------------------------------
    def load(self, rows: Sequence[int] | None = None, *, dtype=torch.float32) -> torch.Tensor:
        """All embeddings (count x d), or just ``rows`` — only from a complete store."""
        man = self.manifest
        if not man.get("complete"):
            done = len(self.finished_shards())
            raise DataError(
                f"{self.path}: the embedding store is incomplete ({done} of {man['n_shards']} "
                "shards); rerun `lore embed` to finish it"
            )
        bounds = sorted((e["start"], e["stop"]) for e in man["shards"])
        edges = [0] + [b for pair in bounds for b in pair] + [man["count"]]
        if any(edges[i] != edges[i + 1] for i in range(0, len(edges), 2)):
            raise DataError(
                f"{self.manifest_path}: the shards listed do not cover rows "
                f"0..{man['count'] - 1} exactly once"
            )
        out = torch.empty(man["count"], man["d"], dtype=dtype)  # filled shard by shard
        for entry in man["shards"]:
            out[entry["start"] : entry["stop"]] = self._read_shard(entry)
        if rows is not None:
            out = out[torch.as_tensor(list(rows), dtype=torch.long)]
        return out

    def _read_shard(self, entry: dict[str, Any]) -> torch.Tensor:
        f = self.path / entry["file"]
        if not f.is_file():
            raise DataError(f"{f}: shard listed in the manifest is missing")
        t = load_file(str(f))["embeddings"]
        if t.shape != (entry["stop"] - entry["start"], self.d):
            raise DataError(
                f"{f}: shape {tuple(t.shape)}, manifest says "
                f"({entry['stop'] - entry['start']}, {self.d})"
            )
        return t

    def reference_head(self) -> torch.Tensor | None:
        """The backbone's reward direction (d,) stored with the embeddings, or None."""
        name = self.manifest.get("reference_head")
        if not name:
            return None
        return load_file(str(self.path / name))["reference_head"].float()

    def reference_bias(self) -> float | None:
        return self.manifest.get("reference_bias")


def _shard_entry(store: Path, i: int, size: int, count: int) -> dict[str, Any]:
    return {
        "file": shard_file(i),
        "start": i * size,
        "stop": min((i + 1) * size, count),
        "bytes": (store / shard_file(i)).stat().st_size,
    }


def _check_shard(path: Path, rows: int, d: int) -> None:
    with safe_open(str(path), framework="pt") as f:
        shape = tuple(f.get_slice("embeddings").get_shape())
    if shape != (rows, d):
        raise DataError(
            f"{path}: finished shard has shape {shape}, expected ({rows}, {d}); "
            "the store is damaged: delete this shard and rerun `lore embed`"
        )
