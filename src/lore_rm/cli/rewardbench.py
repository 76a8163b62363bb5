"""``lore rewardbench``: RewardBench 2 accuracy of a model's heads, per subset."""

from __future__ import annotations

from pathlib import Path

import typer

from lore_rm.cli.common import CACHE_HELP, MAX_LENGTH_HELP, one_line_errors


@one_line_errors
def rewardbench(
    model_dir: Path = typer.Argument(..., help="A lore-rm model folder (save_pretrained)."),
    data: Path = typer.Option(..., help="RewardBench 2 file: .jsonl[.gz], .json or .parquet."),
    backbone: str = typer.Option(
        None, help="Backbone to embed with (default: the one named in the model's config)."
    ),
    user: list[str] = typer.Option(
        [], help="Also score this user's V·w (repeatable; users onboarded by lore serve too)."
    ),
    db: Path | None = typer.Option(
        None, help="lore serve database with onboarded users (default: the one in the model)."
    ),
    dtype: str = typer.Option("bf16", help="Compute dtype: bf16, fp16, fp32 or auto."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    batch_size: int = typer.Option(8, help="Texts per forward pass."),
    max_length: int = typer.Option(4096, help=MAX_LENGTH_HELP),
    cache: Path = typer.Option(None, help=CACHE_HELP),
    out: Path = typer.Option(None, help="Write the scores as JSON here."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    force_backbone: bool = typer.Option(
        False,
        "--force-backbone",
        help="Score with a --backbone other than the one the model was fitted on (same "
        "width): refused by default, as lore serve does.",
    ),
) -> None:
    """Score each basis column, the population head, users' V·w and the reference head."""
    from rich.console import Console
    from rich.table import Table

    from lore_rm.embed.match import resolve_backbone
    from lore_rm.evaluate.rewardbench import SUBSETS, evaluate_rewardbench
    from lore_rm.serve.export import check_users, load_with_served_users

    model, db_path, _ = load_with_served_users(model_dir, db)
    check_users(model, user, db_path)  # before any text is embedded
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
    if forced:
        typer.echo(
            "warning: scoring with a backbone other than the one the model was fitted on "
            "(--force-backbone): " + "; ".join(forced),
            err=True,
        )
    name = embedder.name
    result = evaluate_rewardbench(model, data, embedder, users=user, cache=cache, progress=progress)
    subsets = [s for s in SUBSETS if s in result["counts"]]
    table = Table(title=f"RewardBench 2 — {model_dir} on {name}")
    table.add_column("head")
    for s in subsets:
        table.add_column(f"{s} ({result['counts'][s]})", justify="right")
    table.add_column("overall", justify="right")
    for head, scores in result["heads"].items():
        table.add_row(head, *[f"{scores[s]:.3f}" for s in subsets], f"{scores['overall']:.3f}")
    Console(width=160).print(table)
    if out is not None:
        from lore_rm.io import atomic_write_json

        atomic_write_json(out, {"model": str(model_dir), "backbone": name, **result})
        typer.echo(f"wrote {out}")
