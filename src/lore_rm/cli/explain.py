"""``lore model explain``: what each basis column means, traced back to conversations."""

from __future__ import annotations

from pathlib import Path

import typer

from lore_rm.cli.common import one_line_errors, print_json
from lore_rm.errors import LoreError


@one_line_errors
def explain_cmd(
    model_dir: Path = typer.Argument(..., help="A lore-rm model folder (lore fit)."),
    data: Path = typer.Argument(
        ..., help="A dataset folder embedded with the model's backbone (lore prepare + embed)."
    ),
    top: int = typer.Option(5, min=1, help="Conversations listed per column and end."),
    top_users: int = typer.Option(5, "--users", min=0, help="Users listed per column."),
    center: str = typer.Option(
        "prompt",
        help="'prompt': scores relative to the other responses to the same prompt (prompts "
        "with one response are not listed); 'none': raw scores.",
    ),
    chars: int = typer.Option(200, min=10, help="Characters kept of each prompt and response."),
    db: Path | None = typer.Option(
        None, help="lore serve database with onboarded users (default: the one in the model)."
    ),
    force_backbone: bool = typer.Option(
        False,
        "--force-backbone",
        help="Use embeddings made with a backbone other than the model's (same width).",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead."),
) -> None:
    """Per basis column: the dataset's conversations scoring highest and lowest on it, its
    share of the users' spread, and the users loading on it most."""
    from lore_rm.data.layout import read_conversations, read_parquet
    from lore_rm.embed.match import BackboneMismatchError, backbone_differences, recorded_backbone
    from lore_rm.embed.store import EmbeddingStore
    from lore_rm.evaluate.explain import CENTERS, explain_basis, explain_text
    from lore_rm.serve.export import load_with_served_users

    if center not in CENTERS:
        raise typer.BadParameter(f"must be one of {', '.join(CENTERS)}", param_hint="--center")
    model, _, _ = load_with_served_users(model_dir, db)
    store = EmbeddingStore(data)
    store.check_texts(data)
    if int(store.manifest.get("d", -1)) != int(model.d_):
        raise LoreError(
            f"{data}: embeddings of width {store.manifest.get('d')}, but the model has "
            f"d = {model.d_}; embed the dataset with the model's backbone"
        )
    diffs = backbone_differences(
        recorded_backbone(model_dir) or {"name": model.backbone}, store.backbone
    )
    if diffs and not force_backbone:
        raise BackboneMismatchError(
            f"{data} was embedded with another backbone than {model_dir} was fitted on: "
            f"{'; '.join(diffs)}; embed it with the model's backbone, or pass "
            "--force-backbone"
        )
    conversations = read_conversations(data)
    prompts = read_parquet(Path(data) / "texts.parquet", columns=["prompt_id"])
    report = explain_basis(
        model,
        store.load(),
        conversations,
        [str(p) for p in prompts.column("prompt_id").to_pylist()],
        top=top,
        top_users=top_users,
        center=center,
        chars=chars,
    )
    report = {"model": str(model_dir), "dataset": str(data), **report}
    if out is not None:
        from lore_rm.io import atomic_write_json

        atomic_write_json(out, report)
    if as_json:
        print_json(report)
    else:
        typer.echo(explain_text(report), nl=False)
