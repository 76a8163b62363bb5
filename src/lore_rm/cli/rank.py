"""``lore rank``: best-of-N for a file of prompts and candidate responses, offline."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lore_rm.cli.common import THREADS, one_line_errors, use_threads


@one_line_errors
def rank(
    model_dir: Path = typer.Argument(..., help="A lore-rm model folder (lore fit)."),
    file: Path = typer.Argument(
        ...,
        help="Rows with 'user' (or 'user_id'), 'prompt' (a string or messages) and "
        "'responses' (a list of candidates: strings or assistant messages); an 'id' is "
        "carried over. .jsonl, .json (a list), .parquet or .csv (lists as JSON text).",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write JSON Lines here (atomically); default: stdout."
    ),
    unknown: str = typer.Option(
        "error",
        help="Users without weights: 'error' lists them; 'mean' ranks with the population's "
        "mean weights (known: false).",
    ),
    level: float = typer.Option(0.9, help="Probability of each reward's interval."),
    backbone: str | None = typer.Option(
        None, help="Backbone to embed with (default: the one named in the model's config)."
    ),
    db: Path | None = typer.Option(
        None, help="lore serve database with onboarded users (default: the one in the model)."
    ),
    dtype: str | None = typer.Option(
        None, help="Compute dtype (default: the one the model's training data was embedded in)."
    ),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    batch_size: int = typer.Option(8, min=1, help="Texts per forward pass."),
    max_length: int | None = typer.Option(
        None, help="Token cap (default: the recorded one, else 4096); longer texts keep their end."
    ),
    force_backbone: bool = typer.Option(
        False,
        "--force-backbone",
        help="Rank with a backbone other than the one the model was fitted on (same width).",
    ),
    threads: str = THREADS,
    progress: bool = typer.Option(True, help="Show a progress bar (on stderr)."),
) -> None:
    """Rank each row's candidate responses by its user's reward, best first (as POST /rank
    does): per row its index, id, user, rewards, ranking, best, known, and each reward's
    interval where the user has a posterior, as JSON Lines."""
    from rich.console import Console

    from lore_rm.embed.match import resolve_backbone
    from lore_rm.ranking import interval_z
    from lore_rm.serve.export import check_users, load_with_served_users
    from lore_rm.serve.rank_rows import rank_rows, ranking_records, read_rank_rows

    if unknown not in ("error", "mean"):
        raise typer.BadParameter("must be 'error' or 'mean'", param_hint="--unknown")
    if out is not None and out.suffix.lower() != ".jsonl":
        raise typer.BadParameter("must end in .jsonl", param_hint="--out")
    use_threads(threads)
    interval_z(level)
    model, db_path, _ = load_with_served_users(model_dir, db)
    rows = read_rank_rows(file)
    if unknown == "error":  # before the backbone is loaded
        check_users(model, list(dict.fromkeys(rows.users)), db_path)
    embedder, forced = resolve_backbone(
        model_dir,
        model.backbone,
        model.d_,
        backbone,
        dtype=dtype,
        max_length=max_length,
        force=force_backbone,
        verb="rank",
        device=device,
        batch_size=batch_size,
    )
    rankings = rank_rows(
        model, embedder, rows, db=db_path, level=level, unknown=unknown, progress=progress
    )
    records = ranking_records(rows, rankings, level)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    err = Console(stderr=True, soft_wrap=True)
    if forced:
        err.print(
            "warning: ranked with a backbone other than the one the model was fitted on "
            "(--force-backbone): " + "; ".join(forced),
            highlight=False,
        )
    n_unknown = sum(not r["known"] for r in records)
    note = f"Ranked {len(records)} rows for {len(set(rows.users))} users with {embedder.name}"
    if n_unknown:
        note += f"; {n_unknown} row(s) of unknown users ranked with the population's weights"
    if out is None:
        typer.echo(text, nl=False)
    else:
        from lore_rm.io import atomic_write_text

        atomic_write_text(out, text)
        note += f"; wrote {out}"
    err.print(note, highlight=False)
