"""The embedding store of a dataset folder: sharded, resumable, data-parallel.

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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lore_rm.constants import HEAD_FILE, MANIFEST_FILE, STORE_FORMAT, STORE_FORMAT_VERSION
from lore_rm.data.layout import EMBEDDINGS_DIR, TEXTS_FILE, read_conversations
from lore_rm.embed.backbones import backbone_identity
from lore_rm.embed.base import Embedder
from lore_rm.errors import DataError, LoreError
from lore_rm.io import atomic_write, atomic_write_json, read_format_record

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


@dataclass
class EmbedReport:
    """What one call of :func:`embed_dataset` did (on this rank)."""

    store: Path
    computed: list[int] = field(default_factory=list)  # shard indices computed by this rank
    skipped: list[int] = field(default_factory=list)  # already finished before this run
    rows: int = 0  # texts embedded by this rank
    seconds: float = 0.0
    complete: bool = False

    @property
    def texts_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int, Any]:
    """(rank, world size, a gloo process group or None) for this process."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size <= 1:
        return 0, 1, None
    import torch.distributed as dist

    if not dist.is_available():
        raise LoreError("WORLD_SIZE > 1 but torch.distributed is not available")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise LoreError(
            f"rank/world size {rank}/{world_size} disagree with torch.distributed's "
            f"{dist.get_rank()}/{dist.get_world_size()}"
        )
    # Coordination only needs CPU collectives, whatever backend the job itself uses.
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return rank, world_size, group


def _plan(
    store: Path,
    dataset_dir: Path,
    ident: dict,
    count: int,
    shard_size: int | None,
    storage_dtype: str,
    fingerprint: str,
) -> dict[str, Any]:
    """Validate an existing manifest (or make a new one); return the manifest to run with."""
    mpath = store / MANIFEST_FILE
    if mpath.is_file():
        old = EmbeddingStore(store).manifest
        diffs = [
            f"backbone.{k}: store has {old['backbone'].get(k)!r}, this run {ident.get(k)!r}"
            for k in IDENTITY_FIELDS
            if old["backbone"].get(k) != ident.get(k)
        ]
        if old["count"] != count or old["texts_sha256"] != fingerprint:
            diffs.append(
                f"texts: the store was made from {old['count']} texts with another "
                f"content than {dataset_dir / TEXTS_FILE} now holds ({count} texts)"
            )
        if shard_size is not None and old["shard_size"] != shard_size:
            diffs.append(f"shard_size: store has {old['shard_size']}, this run {shard_size}")
        if old["dtype"] != storage_dtype:
            diffs.append(f"dtype: store has {old['dtype']}, this run {storage_dtype}")
        if diffs:
            raise StoreMismatchError(
                f"{store} was made differently; delete it (or embed into another dataset "
                "folder) to start over:\n  " + "\n  ".join(diffs)
            )
        return old
    size = shard_size or DEFAULT_SHARD_SIZE
    if size < 1:
        raise LoreError(f"shard_size must be at least 1, got {size}")
    return {
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "backbone": ident,
        "d": ident["d"],
        "dtype": storage_dtype,
        "pooling": ident.get("pooling"),
        "count": count,
        "texts_sha256": fingerprint,
        "shard_size": size,
        "n_shards": -(-count // size),
        "shards": [],
        "complete": False,
        "reference_head": None,
        "reference_bias": None,
    }


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


def embed_dataset(
    dataset_dir: str | os.PathLike,
    embedder: Embedder,
    *,
    shard_size: int | None = None,
    storage_dtype: str = "float32",
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> EmbedReport:
    """Fill (or finish) ``dataset_dir/embeddings/`` with ``embedder``'s embeddings of the texts.

    Returns what this rank did. Under torchrun (``WORLD_SIZE`` > 1) every rank must call it;
    a gloo process group is created when none exists.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise LoreError(
            f"storage dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}"
        )
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / TEXTS_FILE).is_file():
        raise DataError(f"{dataset_dir}: no {TEXTS_FILE}; not a lore-rm dataset folder")
    store = dataset_dir / EMBEDDINGS_DIR
    rank, world, group = _dist_info(rank, world_size)
    conversations = read_conversations(dataset_dir)
    count = len(conversations)
    ident = backbone_identity(embedder)
    report = EmbedReport(store=store)

    # 1. rank 0 checks or writes the plan; every rank learns it (or the error).
    manifest: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    if rank == 0:
        try:
            store.mkdir(parents=True, exist_ok=True)
            manifest = _plan(
                store,
                dataset_dir,
                ident,
                count,
                shard_size,
                storage_dtype,
                texts_fingerprint(dataset_dir),
            )
            for stale in store.glob(".*.tmp-*"):  # left by a killed run: never whole
                stale.unlink()
            if manifest["reference_head"] is None:
                head = embedder.reference_head()
                if head is not None:
                    atomic_write(
                        store / HEAD_FILE,
                        lambda p, h=head: save_file(
                            {"reference_head": h.float().contiguous()}, str(p)
                        ),
                    )
                    manifest["reference_head"] = HEAD_FILE
                    bias = getattr(embedder, "reference_bias", lambda: None)()
                    manifest["reference_bias"] = bias
            manifest["shards"] = [
                _shard_entry(store, i, manifest["shard_size"], count)
                for i in range(manifest["n_shards"])
                if (store / shard_file(i)).is_file()
            ]
            manifest["complete"] = len(manifest["shards"]) == manifest["n_shards"]
            _write_json(store / MANIFEST_FILE, manifest)
        except LoreError as exc:
            error = (type(exc).__name__, str(exc))
            if world == 1:
                raise
    if world > 1:
        import torch.distributed as dist

        box = [error, manifest]
        dist.broadcast_object_list(box, src=0, group=group)
        error, manifest = box
        if error is not None:
            kind, message = error
            cls = {"StoreMismatchError": StoreMismatchError, "DataError": DataError}
            raise cls.get(kind, LoreError)(message)
    assert manifest is not None
    size, n_shards = manifest["shard_size"], manifest["n_shards"]

    # 2. this rank's unfinished shards.
    mine = [i for i in range(n_shards) if i % world == rank]
    todo = []
    for i in mine:
        f = store / shard_file(i)
        rows = min((i + 1) * size, count) - i * size
        if f.is_file():
            _check_shard(f, rows, manifest["d"])
            report.skipped.append(i)
        else:
            todo.append(i)
    total = sum(min((i + 1) * size, count) - i * size for i in todo)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        unit="text",
        unit_scale=True,
        dynamic_ncols=True,
        leave=False,
        desc=f"embed {embedder.name}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
        disable=not progress or total == 0,
    )
    start_time = time.perf_counter()
    target = STORAGE_DTYPES[storage_dtype]
    try:
        for i in todo:
            lo, hi = i * size, min((i + 1) * size, count)
            emb = embedder.embed(conversations[lo:hi])
            if emb.shape != (hi - lo, manifest["d"]):
                raise LoreError(
                    f"{embedder.name} returned shape {tuple(emb.shape)} for "
                    f"{hi - lo} texts; expected ({hi - lo}, {manifest['d']})"
                )
            if not torch.isfinite(emb).all():
                raise DataError(f"{embedder.name} produced NaN/inf for rows {lo}..{hi - 1}")
            tensors = {"embeddings": emb.to(target).contiguous()}
            meta = {"rows": f"{lo}:{hi}"}  # one key: safetensors orders several at random
            atomic_write(
                store / shard_file(i), lambda p, t=tensors, m=meta: save_file(t, str(p), metadata=m)
            )
            report.computed.append(i)
            report.rows += hi - lo
            bar.update(hi - lo)
            if world == 1:  # one writer: keep the manifest's shard list current
                manifest["shards"].append(_shard_entry(store, i, size, count))
                manifest["shards"].sort(key=lambda s: s["start"])
                _write_json(store / MANIFEST_FILE, manifest)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start_time

    # 3. once every rank is done, rank 0 completes the manifest.
    if world > 1:
        import torch.distributed as dist

        dist.barrier(group=group)
    if rank == 0:
        missing = [i for i in range(n_shards) if not (store / shard_file(i)).is_file()]
        if not missing:
            manifest["shards"] = [_shard_entry(store, i, size, count) for i in range(n_shards)]
            manifest["complete"] = True
            _write_json(store / MANIFEST_FILE, manifest)
    if world > 1:
        import torch.distributed as dist

        dist.barrier(group=group)
    report.complete = EmbeddingStore(store).is_complete
    return report
