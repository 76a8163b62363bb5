"""``lore personalrewardbench``: a model's PersonalRewardBench score, as the benchmark counts it."""

from __future__ import annotations

from pathlib import Path

import typer

from lore_rm.cli.common import JSON_HELP, one_line_errors, print_json


@one_line_errors
def personalrewardbench(
    model_dir: Path = typer.Argument(..., help="A lore-rm model folder (lore fit)."),
    dataset: Path = typer.Argument(
        ...,
        help="Its dataset folder (lore prepare personalrewardbench), embedded with the model's "
        "backbone (lore embed).",
    ),
    n_boot: int = typer.Option(2000, min=1, help="Bootstrap resamples of the intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap draws."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the score and every user's accuracy as JSON here."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Pairwise accuracy on the test pairs over both orderings of each pair, pooled over
    judgments and as the mean over users, each with its 95% bootstrap interval. Test users
    the model does not know are first fitted from their own train + val comparisons."""
    from rich.console import Console

    from lore_rm.embed.split import load_split
    from lore_rm.errors import LoreError
    from lore_rm.evaluate.personalrewardbench import score_personalrewardbench
    from lore_rm.fit.model import LowRankReward
    from lore_rm.io import atomic_write_json

    model = LowRankReward.from_pretrained(model_dir)
    split, backbone = load_split(dataset)
    name = backbone.get("name")
    if model.backbone and name and model.backbone != name:
        raise LoreError(
            f"{dataset} is embedded with {name!r} but {model_dir} was fitted on "
            f"{model.backbone!r}: embed the dataset with the model's backbone"
        )
    score = score_personalrewardbench(model, split, n_boot=n_boot, seed=seed)
    if not score.pairs:
        raise LoreError(f"{dataset}: no test comparisons (seen-test / unseen-test) to score")
    result = {"model": str(model_dir), "dataset": str(dataset), **score.to_dict()}
    if out is not None:
        atomic_write_json(out, result)
    console = Console(stderr=as_json, highlight=False)
    level = f"{100 * score.pooled.level:g}%"
    console.print(
        f"PersonalRewardBench: {model_dir} on {dataset} ({len(score.per_user)} users, "
        f"{score.pairs} test pairs, {score.judgments} judgments, {score.ties} ties)"
    )
    for label, m, over in (
        ("accuracy, both orderings", score.pooled, "judgments"),
        ("mean over users", score.user_mean, "users"),
    ):
        console.print(
            f"  {label:<26} {m.mean:.4f}  [{m.lower:.4f}, {m.upper:.4f}]  "
            f"({level} bootstrap over {over})"
        )
    if out is not None:
        console.print(f"Wrote {out}")
    if as_json:
        print_json(result)
