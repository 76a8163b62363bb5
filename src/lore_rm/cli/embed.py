"""``lore embed``: fill a dataset folder's embedding store (resumable, torchrun-aware)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from lore_rm.cli.common import (
    CACHE_HELP,
    MAX_LENGTH_HELP,
    collected_warnings,
    one_line_errors,
)
from lore_rm.wording import counted


@one_line_errors
def embed(
    dataset: Path = typer.Argument(..., help="Dataset folder (holds texts.parquet)."),
    backbone: str = typer.Option(
        ...,
        "--backbone",
        "-b",
        help="Hub name or local folder of a reward model, or 'minilm', or 'hashing-64'.",
    ),
    dtype: str = typer.Option("bf16", help="Compute dtype: bf16, fp16, fp32 or auto."),
    device: str = typer.Option(
        "auto", help="cpu, cuda, cuda:N, or auto (this rank's GPU when there is one)."
    ),
    batch_size: int = typer.Option(8, help="Texts per forward pass (length-sorted)."),
    max_length: int = typer.Option(4096, help=MAX_LENGTH_HELP),
    shard_size: int = typer.Option(
        None,
        help="Texts per shard, the unit of resuming (default 512, or the existing store's).",
    ),
    store_dtype: str = typer.Option(
        "float32", help="Dtype of the stored shards: float32, bfloat16 or float16."
    ),
    attn_implementation: str = typer.Option(
        None, help="Passed to transformers, e.g. sdpa or flash_attention_2."
    ),
    revision: str = typer.Option(None, help="Hub revision (commit, branch or tag)."),
    cache: Path | None = typer.Option(None, help=CACHE_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar (texts/s)."),
) -> None:
    """Embed DATASET's unique texts with a frozen backbone into DATASET/embeddings/.

    Resumes an interrupted run; under `torchrun --nproc_per_node N lore embed ...` each rank
    embeds its own shards and rank 0 completes the manifest.
    """
    import os

    from lore_rm.embed import embed_dataset, load_backbone

    try:
        with collected_warnings():  # one line each, without Python's file and line
            cached = None
            embedder = load_backbone(
                backbone,
                dtype=dtype,
                device=device,
                batch_size=batch_size,
                max_length=max_length,
                attn_implementation=attn_implementation,
                revision=revision,
            )
            if cache is not None:
                from lore_rm.embed.cache import CachedEmbedder

                embedder = cached = CachedEmbedder(embedder, cache)
            report = embed_dataset(
                dataset,
                embedder,
                shard_size=shard_size,
                storage_dtype=store_dtype,
                progress=progress,
            )
    except KeyboardInterrupt:
        interrupted(dataset)
    rank = os.environ.get("RANK", "0")
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    typer.echo(
        f"{prefix}{report.store}: computed {counted(len(report.computed), 'shard')} "
        f"({counted(report.rows, 'text')}, {report.texts_per_second:.1f} texts/s), "
        f"{len(report.skipped)} already done; store "
        + ("complete" if report.complete else "incomplete")
        + (
            f"; of these texts {cached.hits} read from the cache, {cached.misses} embedded"
            if cached is not None
            else ""
        )
    )


def interrupted(dataset: Path) -> NoReturn:
    """Ctrl-C: say what is saved and how to go on, then exit 130 (no traceback)."""
    from lore_rm.embed import EmbeddingStore
    from lore_rm.errors import LoreError

    try:
        store = EmbeddingStore(dataset)
        man = store.manifest
        done = store.finished_shards()
        size, count = man["shard_size"], man["count"]
        texts = sum(min((i + 1) * size, count) - i * size for i in done)
        saved = f"{len(done)} of {man['n_shards']} shards ({texts} of {count} texts) are saved"
    except (LoreError, OSError, KeyError):
        saved = "nothing was saved yet"
    typer.echo(
        f"\ninterrupted: {saved} in {Path(dataset) / 'embeddings'}; the shard in progress is "
        "lost. Rerun the same `lore embed` command to resume.",
        err=True,
    )
    raise typer.Exit(130)
