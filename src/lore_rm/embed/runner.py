"""Filling a dataset's embedding store: plan the shards, run them, finish the manifest.

:func:`embed_dataset` is the distributed wrapper around three steps. Under ``torchrun`` /
``accelerate launch`` every rank calls it: rank 0 plans (:func:`prepare_store`) and every
rank learns the plan (or its error) by one broadcast; each rank runs its own shards r, r + W,
r + 2W, ... (:func:`run_shards`), with no gathering; after a barrier rank 0 completes the
manifest (:func:`finish_store`). The layout and the guarantees are in
:mod:`lore_rm.embed.store`.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lore_rm.constants import HEAD_FILE, MANIFEST_FILE, STORE_FORMAT, STORE_FORMAT_VERSION
from lore_rm.conversation import Conversation
from lore_rm.data.layout import EMBEDDINGS_DIR, TEXTS_FILE, read_conversations
from lore_rm.dtypes import STORAGE, name_of, parse_dtype
from lore_rm.embed.backbones import backbone_identity
from lore_rm.embed.base import Embedder
from lore_rm.embed.store import (
    DEFAULT_SHARD_SIZE,
    IDENTITY_FIELDS,
    STORAGE_DTYPES,
    EmbeddingStore,
    StoreMismatchError,
    _check_shard,
    _shard_entry,
    _write_json,
    shard_file,
    texts_fingerprint,
)
from lore_rm.errors import DataError, LoreError
from lore_rm.io import atomic_write


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
        had, has = old["backbone"].get("fingerprint"), ident.get("fingerprint")
        if had and has and had != has:  # stores made before fingerprints were recorded have none
            diffs.append(
                f"backbone.fingerprint: store has {had!r}, this run {has!r} (other weights)"
            )
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


def _tensor_writer(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        save_file(tensors, str(path), metadata=metadata)

    return write


def prepare_store(
    store: Path,
    dataset_dir: Path,
    embedder: Embedder,
    ident: dict,
    count: int,
    shard_size: int | None,
    storage_dtype: str,
) -> dict[str, Any]:
    """Planning (rank 0): check the manifest against this run (or make one), remove a killed
    run's temporary files, store the reference head, list the finished shards; write and
    return the manifest."""
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
                _tensor_writer({"reference_head": head.float().contiguous()}),
            )
            manifest["reference_head"] = HEAD_FILE
            bias = getattr(embedder, "reference_bias", lambda: None)()
            manifest["reference_bias"] = bias
    known = {e["file"]: e for e in manifest["shards"]}
    manifest["shards"] = [
        _shard_entry(store, i, manifest["shard_size"], count, known.get(shard_file(i)))
        for i in range(manifest["n_shards"])
        if (store / shard_file(i)).is_file()
    ]
    manifest["complete"] = len(manifest["shards"]) == manifest["n_shards"]
    _write_json(store / MANIFEST_FILE, manifest)
    return manifest


def run_shards(
    store: Path,
    embedder: Embedder,
    conversations: Sequence[Conversation],
    manifest: dict[str, Any],
    shards: Sequence[int],
    report: EmbedReport,
    *,
    storage_dtype: str,
    single_writer: bool,
    progress: bool,
    desc: str,
) -> None:
    """Running: embed and write the given shards that are not finished (finished ones are
    checked and skipped). ``single_writer``: also keep the manifest's shard list current
    (only when no other rank writes it)."""
    count = len(conversations)
    todo = []
    size = manifest["shard_size"]
    known = {e["file"]: e for e in manifest["shards"]}
    for i in shards:
        f = store / shard_file(i)
        rows = min((i + 1) * size, count) - i * size
        if f.is_file():
            _check_shard(f, rows, manifest["d"], known.get(f.name, {}).get("sha256"))
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
        desc=desc,
        disable=not progress or total == 0,
    )
    start_time = time.perf_counter()
    target = STORAGE_DTYPES[storage_dtype]
    truncated_before = getattr(embedder, "truncated", 0)
    try:
        with warnings.catch_warnings():  # per-shard truncation warnings: one summary below
            warnings.filterwarnings("ignore", message=".* longer than max_length")
            for i in todo:
                lo, hi = i * size, min((i + 1) * size, count)
                emb = embed_with_progress(embedder, conversations[lo:hi], bar)
                if emb.shape != (hi - lo, manifest["d"]):
                    raise LoreError(
                        f"{embedder.name} returned shape {tuple(emb.shape)} for "
                        f"{hi - lo} texts; expected ({hi - lo}, {manifest['d']})"
                    )
                if not torch.isfinite(emb).all():
                    raise DataError(f"{embedder.name} produced NaN/inf for rows {lo}..{hi - 1}")
                tensors = {"embeddings": emb.to(target).contiguous()}
                meta = {"rows": f"{lo}:{hi}"}  # one key: safetensors orders several at random
                atomic_write(store / shard_file(i), _tensor_writer(tensors, metadata=meta))
                report.computed.append(i)
                report.rows += hi - lo
                bar.n = sum(min((j + 1) * size, count) - j * size for j in report.computed)
                bar.refresh()
                if single_writer:  # keep the manifest's shard list current
                    manifest["shards"].append(_shard_entry(store, i, size, count))
                    manifest["shards"].sort(key=lambda s: s["start"])
                    _write_json(store / MANIFEST_FILE, manifest)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start_time
        truncated = getattr(embedder, "truncated", 0) - truncated_before
        if truncated:
            warnings.warn(
                f"{embedder.name}: {truncated} of the {report.rows} texts embedded were longer "
                f"than max_length = {getattr(embedder, 'max_length', '?')} tokens and kept "
                "only their last tokens",
                stacklevel=2,
            )


def embed_with_progress(embedder: Embedder, texts: Sequence[Conversation], bar) -> torch.Tensor:
    """``embedder.embed(texts)``, moving ``bar`` per batch when the embedder can report it."""
    try:
        accepts = "progress" in inspect.signature(embedder.embed).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        return embedder.embed(texts, progress=bar.update)  # type: ignore[call-arg]  # checked above
    return embedder.embed(texts)


def finish_store(store: Path, manifest: dict[str, Any], count: int) -> None:
    """Finishing (rank 0, once every rank is done): mark the manifest complete when every
    shard exists."""
    size, n_shards = manifest["shard_size"], manifest["n_shards"]
    missing = [i for i in range(n_shards) if not (store / shard_file(i)).is_file()]
    if not missing:
        known = {e["file"]: e for e in manifest["shards"]}
        manifest["shards"] = [
            _shard_entry(store, i, size, count, known.get(shard_file(i))) for i in range(n_shards)
        ]
        manifest["complete"] = True
        _write_json(store / MANIFEST_FILE, manifest)


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
    storage_dtype = name_of(parse_dtype(storage_dtype, allowed=STORAGE, what="storage dtype"))
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
            manifest = prepare_store(
                store, dataset_dir, embedder, ident, count, shard_size, storage_dtype
            )
        except LoreError as exc:
            error = (type(exc).__name__, str(exc))
            if world == 1:
                raise
    if world > 1:
        import torch.distributed as dist

        box: list[Any] = [error, manifest]
        dist.broadcast_object_list(box, src=0, group=group)
        error, manifest = box
        if error is not None:
            kind, message = error
            cls = {"StoreMismatchError": StoreMismatchError, "DataError": DataError}
            raise cls.get(kind, LoreError)(message)
    assert manifest is not None

    # 2. this rank's shards.
    run_shards(
        store,
        embedder,
        conversations,
        manifest,
        [i for i in range(manifest["n_shards"]) if i % world == rank],
        report,
        storage_dtype=storage_dtype,
        single_writer=world == 1,
        progress=progress,
        desc=f"embed {embedder.name}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
    )

    # 3. once every rank is done, rank 0 completes the manifest.
    if world > 1:
        import torch.distributed as dist

        dist.barrier(group=group)
    if rank == 0:
        finish_store(store, manifest, count)
    if world > 1:
        import torch.distributed as dist

        dist.barrier(group=group)
    report.complete = EmbeddingStore(store).is_complete
    return report
