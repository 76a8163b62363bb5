"""The embedding store of a dataset folder: sharded, resumable, data-parallel.

This module reads and describes a store; :mod:`lore_rm.embed.runner` fills it.

Layout of ``DATASET/embeddings/``::

    manifest.json                 what the store holds and how it was made (see below)
    shard-00000.safetensors       rows [0, S) of texts.parquet, tensor "embeddings" (rows x d)
    shard-00001.safetensors       rows [S, 2S), ...
    reference_head.safetensors    the backbone's reward direction "reference_head" (d,), when
                                  the backbone has one

``manifest.json``: ``format`` / ``format_version``; ``backbone`` (name, revision, content
fingerprint (:mod:`~lore_rm.embed.fingerprint`), kind, pooling, compute dtype, chat-template
sha256, max_length, d) and ``backbone_sha256`` (its digest: an edited backbone record is
refused); ``d``; ``dtype`` (storage dtype
of the shards); ``count`` (texts = rows); ``texts_sha256`` (fingerprint of texts.parquet's
messages); ``shard_size``; ``n_shards``; ``shards`` (file, start, stop, bytes and sha256 of each
finished shard); ``complete``; ``reference_head`` (file name or null) and ``reference_bias``.

Guarantees:

* a shard file exists under its final name only once it is whole (written to a temporary
  name, then renamed); the manifest is replaced atomically the same way;
* a run over an existing store continues where the last stopped: finished shards are never
  recomputed or rewritten, stale temporary files are removed;
* a run whose backbone (or texts, or shard size) differs from the manifest's stops with an
  error naming the differing fields (the fingerprint is compared when both have one);
* every read checks each shard against its recorded sha256 and its rows against its name, and
  :func:`~lore_rm.embed.split.load_split` checks the texts' fingerprint: a flipped byte, a
  swapped shard file or manifest entry, a shard entry without the sha256 the others have, an
  edited backbone record, or a re-prepared ``texts.parquet`` is an error, never silently
  wrong embeddings (stores written before checksums were recorded load unchecked);
* under ``torchrun`` / ``accelerate launch`` rank r embeds shards r, r + W, r + 2W, ... with
  no gathering; rank 0 writes the manifest and completes it once every rank is done.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lore_rm.constants import MANIFEST_FILE
from lore_rm.data.layout import EMBEDDINGS_DIR, TEXTS_FILE
from lore_rm.data.store_manifest import (  # noqa: F401  (the store's names, read by data too)
    backbone_digest,
    check_manifest,
    read_manifest,
    texts_fingerprint,
)
from lore_rm.dtypes import DTYPES, STORAGE
from lore_rm.errors import DataError, LoreError
from lore_rm.io import atomic_write_json, read_tensors

#: texts per shard: a kill loses at most one shard's work (about a minute for an 8B reward
#: model on one GPU, or MiniLM on two CPU cores), and ranks share the work evenly
DEFAULT_SHARD_SIZE = 512
STORAGE_DTYPES = {name: DTYPES[name] for name in STORAGE}
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
    """Write the manifest ``obj``, with the digest of its backbone record."""
    obj["backbone_sha256"] = backbone_digest(obj["backbone"])
    atomic_write_json(path, obj)


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
        return read_manifest(self.path)

    @property
    def is_complete(self) -> bool:
        return self.exists() and bool(self.manifest.get("complete"))

    @property
    def backbone(self) -> dict[str, Any]:
        return dict(self.manifest["backbone"])

    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the shards (what ``load_split`` keeps: no float32 copy)."""
        return STORAGE_DTYPES[self.manifest.get("dtype", "float32")]

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

    def check_texts(self, dataset_dir: str | os.PathLike) -> None:
        """A :class:`StoreMismatchError` unless the store was made from ``dataset_dir``'s
        texts.parquet as it is now (same texts, same order)."""
        man = self.manifest
        if man.get("texts_sha256") != texts_fingerprint(dataset_dir):
            raise StoreMismatchError(
                f"{self.path}: these embeddings were made from other texts than "
                f"{Path(dataset_dir) / TEXTS_FILE} now holds (re-prepared or edited since); "
                "rerun `lore embed` (delete the embeddings folder first)"
            )

    def _read_shard(self, entry: dict[str, Any]) -> torch.Tensor:
        f = self.path / entry["file"]
        if not f.is_file():
            raise DataError(f"{f}: shard listed in the manifest is missing")
        size = int(self.manifest["shard_size"])
        index = shard_index(entry["file"])
        if index is None or entry["start"] != index * size:
            raise DataError(
                f"{self.manifest_path}: the entry for {entry['file']} says rows "
                f"{entry['start']}..{entry['stop'] - 1}, which are not that shard's rows; "
                "the manifest was edited or damaged"
            )
        data = f.read_bytes()
        check_digest(f, data, entry.get("sha256"))
        t = read_tensors(f, data=data)["embeddings"]
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
        return read_tensors(self.path / name)["reference_head"].float()

    def reference_bias(self) -> float | None:
        return self.manifest.get("reference_bias")


def shard_index(name: str) -> int | None:
    m = re.fullmatch(r"shard-(\d+)\.safetensors", name)
    return int(m.group(1)) if m else None


def check_digest(path: Path, data: bytes, sha256: str | None) -> None:
    """A :class:`DataError` when ``data`` (read from ``path``) does not have ``sha256``."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(
            f"{path}: its contents do not match the checksum recorded when it was written "
            "(a damaged or swapped file); delete it and rerun `lore embed` to recompute it"
        )


def _shard_entry(
    store: Path, i: int, size: int, count: int, known: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest entry of finished shard ``i``; its sha256 comes from ``known`` (the entry
    recorded when the shard was written) or, for a shard not yet listed, from the file."""
    f = store / shard_file(i)
    nbytes = f.stat().st_size
    if known and known.get("sha256") and known.get("bytes") == nbytes:
        digest = known["sha256"]
    else:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
    return {
        "file": shard_file(i),
        "start": i * size,
        "stop": min((i + 1) * size, count),
        "bytes": nbytes,
        "sha256": digest,
    }


def _check_shard(path: Path, rows: int, d: int, sha256: str | None = None) -> None:
    if sha256 is not None:
        check_digest(path, path.read_bytes(), sha256)
    try:
        with safe_open(str(path), framework="pt") as f:
            shape = tuple(f.get_slice("embeddings").get_shape())
    except (SafetensorError, OSError) as exc:
        raise DataError(
            f"{path}: finished shard is not a readable safetensors file ({exc}); the store is "
            "damaged: delete this shard and rerun `lore embed`"
        ) from None
    if shape != (rows, d):
        raise DataError(
            f"{path}: finished shard has shape {shape}, expected ({rows}, {d}); "
            "the store is damaged: delete this shard and rerun `lore embed`"
        )
