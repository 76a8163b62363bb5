"""``lore fit`` and ``lore evaluate``: the model and the published protocols on a dataset."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from lore_rm.cli.common import fail, parse_float_list, parse_int_list
from lore_rm.errors import LoreError

DATASET = typer.Argument(
    ..., help="Dataset folder (lore prepare ...) with embeddings (lore embed)."
)
RECIPE = typer.Option("default", help="'default' (lore-rm) or 'paper' (published).")
SEED = typer.Option(0, help="Seed of every fit and draw.")
DEVICE = typer.Option("cpu", help="Torch device for the fits, e.g. 'cpu' or 'cuda'.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def _settings(alpha: float | None, n_iter: int | None, regularizer: str | None) -> dict:
    out: dict = {}
    if alpha is not None:
        out["alpha"] = alpha
    if n_iter is not None:
        out["n_iter"] = n_iter
    if regularizer is not None:
        out["regularizer"] = regularizer
    return out


def fit_cmd(
    dataset: Path = DATASET,
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    rank: int = typer.Option(5, help="Rank K of the basis (0 = reference head)."),
    recipe: str = RECIPE,
    alpha: float | None = typer.Option(None, help="Weight of the pull toward the reference head."),
    regularizer: str | None = typer.Option(None, help="'cosine' or 'l2' (with --alpha)."),
    n_iter: int | None = typer.Option(None, help="Iterations (default: the recipe's)."),
    personalize_unseen: bool = typer.Option(
        True, help="Also fit the unseen users from their few-shot comparisons."
    ),
    seed: int = SEED,
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Fit the basis and the seen users' weights; save the model and print the four numbers."""
    from lore_rm.embed.split import load_split
    from lore_rm.evaluate.protocols import four_numbers
    from lore_rm.evaluate.report import LABELS, METRICS, write_json
    from lore_rm.fit.model import LowRankReward

    console = Console()
    try:
        split, backbone = load_split(dataset)
        t0 = time.perf_counter()
        model = LowRankReward(
            rank=rank,
            recipe=recipe,  # type: ignore[arg-type]  # checked by FitConfig.for_recipe
            backbone=backbone.get("name"),
            device=device,
            seed=seed,
            **_settings(alpha, n_iter, regularizer),
        ).fit(split.seen_train, split.reference_head, progress=progress)
        seconds = time.perf_counter() - t0
        numbers = four_numbers(model, split)
        if personalize_unseen and split.unseen_fewshot.n:
            model.personalize(split.unseen_fewshot, progress=progress)
        model.save_pretrained(out)
    except LoreError as exc:
        fail(exc)
    write_json(
        out / "training.json",
        {
            "dataset": str(dataset),
            "backbone": backbone,
            "fit_seconds": round(seconds, 3),
            "accuracy": numbers,
            "history": model.history_,
        },
    )
    for m in METRICS:
        console.print(f"{LABELS[m]:32s} {numbers[m]:.3f} ± {numbers[m + '_std']:.3f}")
    console.print(f"Wrote {out}/ (rank {rank}, {len(model.users_)} users, {seconds:.1f} s fit)")


def evaluate_cmd(
    dataset: Path = DATASET,
    out: Path = typer.Option(Path("lore-eval"), "--out", "-o", help="Report folder."),
    ranks: str = typer.Option("0..6", help="Ranks, e.g. '0..10' or '0,1,5,10'."),
    alphas: str = typer.Option("0", help="Reference-pull weights, e.g. '0,1e4'."),
    recipe: str = RECIPE,
    regularizer: str | None = typer.Option(None, help="'cosine' or 'l2'."),
    n_iter: int | None = typer.Option(None, help="Iterations (default: the recipe's)."),
    shots: str = typer.Option("5,10,20,30,40,50", help="Shots per unseen user ('' = skip)."),
    shots_rank: int | None = typer.Option(
        None,
        help="Rank for the shots sweep (default: the smallest rank within 0.005 of the best "
        "seen-user test accuracy).",
    ),
    trials: int = typer.Option(20, help="Random draws of the shots per value."),
    seed: int = SEED,
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """The published protocol: four numbers for every (rank, alpha), then the shots sweep."""
    from lore_rm.embed.split import load_split
    from lore_rm.evaluate.protocols import run_protocol
    from lore_rm.evaluate.report import print_tables, rank_table, shots_table, write_sweep_report

    console = Console()
    rank_list = parse_int_list(ranks, "--ranks")
    alpha_list = parse_float_list(alphas, "--alphas")
    shot_list = parse_int_list(shots, "--shots") if shots.strip() else []
    settings = _settings(None, n_iter, regularizer)
    config = {
        "command": "evaluate",
        "dataset": str(dataset),
        "ranks": rank_list,
        "alphas": alpha_list,
        "recipe": recipe,
        "settings": settings,
        "shots": shot_list,
        "trials": trials,
        "seed": seed,
    }
    try:
        split, backbone = load_split(dataset)
        config["backbone"] = backbone
        result = run_protocol(
            split,
            rank_list,
            alpha_list,
            shot_list,
            trials,
            shots_rank=shots_rank,
            recipe=recipe,  # type: ignore[arg-type]  # checked by FitConfig.for_recipe
            seed=seed,
            device=device,
            progress=progress,
            **settings,
        )
        rows, shot_rows = result.rows, result.shot_rows
    except LoreError as exc:
        fail(exc)
    print_tables(rank_table(rows, title=f"{dataset} — recipe '{recipe}'"), console=console)
    if shot_rows:
        print_tables(shots_table(shot_rows), console=console)
    names = write_sweep_report(
        out,
        rows=rows,
        shot_rows=shot_rows,
        config=config,
        title=f"{Path(dataset).name} (recipe '{recipe}')",
    )
    console.print(f"Wrote {out}/: {' '.join(names)}")
