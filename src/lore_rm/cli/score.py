"""``lore score``: personalised rewards for a file of conversations, offline."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lore_rm.cli.common import (
    CACHE_HELP,
    MAX_LENGTH_HELP,
    THREADS,
    one_line_errors,
    use_threads,
)
from lore_rm.errors import UnknownUserError
from lore_rm.wording import counted

OUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


@one_line_errors
def score(
    model_dir: Path = typer.Argument(..., help="A lore-rm model folder (lore fit)."),
    file: Path = typer.Argument(
        ...,
        help="Rows with 'user' (or 'user_id') and 'messages' (a list of {role, content} "
        "ending with the assistant response), or 'prompt' + 'response' strings; an 'id' is "
        "carried over. .jsonl, .json (a list), .parquet or .csv.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write the scores here (.jsonl or .csv, written atomically); default: JSON "
        "Lines on stdout.",
    ),
    unknown: str = typer.Option(
        "error",
        help="Users without weights (in the model or the serve database): 'error' lists "
        "them; 'mean' scores them with the population's mean weights (known: false).",
    ),
    backbone: str | None = typer.Option(
        None, help="Backbone to embed with (default: the one named in the model's config)."
    ),
    db: Path | None = typer.Option(
        None, help="lore serve database with onboarded users (default: the one in the model)."
    ),
    dtype: str | None = typer.Option(
        None,
        help="Compute dtype: bf16, fp16, fp32 or auto (default: the dtype the model's "
        "training data was embedded in, when lore fit recorded it; else bf16).",
    ),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    batch_size: int = typer.Option(8, min=1, help="Texts per forward pass."),
    max_length: int | None = typer.Option(
        None, help=MAX_LENGTH_HELP + " Default: what the model's embeddings used, else 4096."
    ),
    force_backbone: bool = typer.Option(
        False,
        "--force-backbone",
        help="Score with a backbone other than the one the model was fitted on (same width): "
        "refused by default, as lore serve does.",
    ),
    cache: Path | None = typer.Option(None, help=CACHE_HELP),
    threads: str = THREADS,
    progress: bool = typer.Option(True, help="Show a progress bar (on stderr)."),
) -> None:
    """Personalised rewards for a file of conversations, offline: per input row its index,
    id (when given), user, reward and whether the user was known."""
    from rich.console import Console

    from lore_rm.embed.match import resolve_backbone
    from lore_rm.serve.export import check_users, load_with_served_users
    from lore_rm.serve.scoring import read_score_rows, score_rows

    if unknown not in ("error", "mean"):
        raise typer.BadParameter("must be 'error' or 'mean'", param_hint="--unknown")
    fmt = "jsonl"
    if out is not None:
        fmt = OUT_FORMATS.get(out.suffix.lower(), "")
        if not fmt:
            raise typer.BadParameter("must end in .jsonl or .csv", param_hint="--out")
    use_threads(threads)
    model, db_path, _ = load_with_served_users(model_dir, db)
    rows = read_score_rows(file)
    if unknown == "error":  # before the backbone is loaded
        try:
            check_users(model, list(dict.fromkeys(rows.users)), db_path)
        except UnknownUserError as exc:
            raise UnknownUserError(
                f"{exc}; pass --unknown mean to score their rows with the population's mean weights"
            ) from None
    embedder, forced = resolve_backbone(
        model_dir,
        model.backbone,
        model.d_,
        backbone,
        dtype=dtype,
        max_length=max_length,
        force=force_backbone,
        verb="score",
        device=device,
        batch_size=batch_size,
    )
    if cache is not None:
        from lore_rm.embed.cache import CachedEmbedder

        embedder = CachedEmbedder(embedder, cache)
    rewards, known = score_rows(
        model, embedder, rows, unknown=unknown, db=db_path, progress=progress
    )
    records = []
    with_ids = any(i is not None for i in rows.ids)
    for i, (user, reward, k) in enumerate(
        zip(rows.users, rewards.tolist(), known.tolist(), strict=True)
    ):
        rec = {"index": i, "id": rows.ids[i]} if with_ids else {"index": i}
        records.append({**rec, "user": user, "reward": reward, "known": k})
    text = _render(records, fmt)
    if forced:
        Console(stderr=True, soft_wrap=True).print(
            "warning: scored with a backbone other than the one the model was fitted on "
            "(--force-backbone): " + "; ".join(forced),
            highlight=False,
        )
    n_unknown = sum(not r["known"] for r in records)
    note = (
        f"Scored {counted(len(records), 'row')} for {counted(len(set(rows.users)), 'user')} "
        f"with {embedder.name}"
    )
    if n_unknown:
        note += f"; {counted(n_unknown, 'row')} of unknown users got the population's mean weights"
    if out is None:
        typer.echo(text, nl=False)
    else:
        from lore_rm.io import atomic_write_text

        atomic_write_text(out, text)
        note += f"; wrote {out}"
    Console(stderr=True, soft_wrap=True).print(note, highlight=False)


def _render(records: list[dict], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    from lore_rm.evaluate.report import rows_to_csv

    return rows_to_csv(records)
