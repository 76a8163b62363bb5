"""``lore fit`` and ``lore evaluate``: the model and the published protocols on a dataset."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from lore_rm.cli.common import (
    ACTIVE_BATCH,
    JSON_HELP,
    THREADS,
    active_option,
    collected_warnings,
    one_line_errors,
    parse_float_list,
    parse_int_list,
    print_json,
    use_threads,
)
from lore_rm.cli.fit_options import fit_options
from lore_rm.cli.groups import FIT_GROUP_BY, GROUP_BY
from lore_rm.cli.rerun import as_list_text, config_option, to
from lore_rm.constants import DB_FILE, TRAINING_FILE
from lore_rm.errors import LoreError
from lore_rm.fit.history import FitHistory
from lore_rm.io import atomic_folder
from lore_rm.wording import counted

DATASET = typer.Argument(
    ..., help="Dataset folder (lore prepare ...) with embeddings (lore embed)."
)
RECIPE = typer.Option("default", help="'default' (lore-rm) or 'paper' (published).")
SEED = typer.Option(0, help="Seed of every fit and draw.")
DEVICE = typer.Option("cpu", help="Torch device for the fits, e.g. 'cpu' or 'cuda'.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
JSON_OUT = typer.Option(False, "--json", help=JSON_HELP)


@fit_options()
@one_line_errors
def fit_cmd(
    dataset: Path = DATASET,
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an existing OUT folder (its serving database, if any, is moved aside).",
    ),
    rank: str = typer.Option(
        "auto",
        help="Rank K of the basis (0 = reference head), or 'auto': chosen by cross-validation "
        "over --rank-grid.",
    ),
    recipe: str = RECIPE,
    personalize_unseen: bool = typer.Option(
        True, help="Also fit the unseen users from their few-shot comparisons."
    ),
    group_by: str | None = FIT_GROUP_BY,
    all_data: bool = typer.Option(
        False,
        "--all-data",
        help="Fit on every comparison of every role, each user a seen user: the model to "
        "deploy once the default split has measured it (prints no held-out numbers).",
    ),
    seed: int = SEED,
    device: str = DEVICE,
    threads: str = THREADS,
    progress: bool = PROGRESS,
    as_json: bool = JSON_OUT,
    per_user: Path | None = typer.Option(
        None,
        "--per-user",
        help="Also write every test user's pooled / shared / personal accuracy to this file "
        "(.csv or .jsonl); training.json has them either way.",
    ),
    fit_settings: dict | None = None,
) -> None:
    """Fit the basis and the seen users' weights; save the model and print the four numbers.

    With the default recipe the rank (--rank auto) and the ridge (--weight-decay auto) are
    chosen by cross-validation over the seen users' training comparisons; the chosen values
    and the selection curve are printed, drawn (selection.png) and saved. --json prints the
    summary (settings, selection, accuracy, diagnostics) as JSON on stdout.
    """
    from lore_rm.cli.groups import training_population
    from lore_rm.data.dataset import PreferenceDataset
    from lore_rm.embed.split import load_split
    from lore_rm.evaluate.personalization import personalization_report, pooled_model
    from lore_rm.evaluate.protocols import four_numbers
    from lore_rm.evaluate.report import METRICS, number_line, write_json
    from lore_rm.fit.model import LowRankReward

    console = Console(stderr=as_json)
    use_threads(threads)
    with collected_warnings() as warned:
        check_model_out(out, overwrite)
        split, backbone = load_split(dataset, all_data=all_data)
        t0 = time.perf_counter()
        model = LowRankReward(
            rank=_rank(rank),
            recipe=recipe,  # type: ignore[arg-type]  # checked by FitConfig.for_recipe
            backbone=backbone.get("name"),
            device=device,
            seed=seed,
            **(fit_settings or {}),
        ).fit(split.seen_train, split.reference_head, progress=progress)
        seconds = time.perf_counter() - t0
        numbers = four_numbers(model, split)
        report = personalization_report(model, split, pooled=pooled_model(model, split))
        model.history_["personalization"] = report.to_dict()
        population = training_population(model, split, PreferenceDataset(dataset).users, group_by)
        if population is not None:  # the model card's training population by group
            model.history_["population"] = population
        if personalize_unseen and split.unseen_fewshot.n:
            model.personalize(split.unseen_fewshot, progress=progress)
        sel = model.history_.get("selection")
        with atomic_folder(out, overwrite=True) as tmp:  # refused above unless --overwrite
            model.save_pretrained(tmp)
            write_json(
                tmp / TRAINING_FILE,
                {
                    "dataset": str(dataset),
                    "all_data": all_data,
                    "backbone": backbone,
                    "fit_seconds": round(seconds, 3),
                    "accuracy": numbers,
                    "personalization": report.to_dict(per_user=True),
                    "history": model.history_,
                },
            )
            if per_user is not None:
                write_rows(per_user, report.per_user)
            if sel:
                plot_selection(sel, tmp / "selection.png")
            moved = set_aside_database(out)  # last: a failed write leaves the old folder whole
    for m in METRICS[:1] if all_data else METRICS:
        console.print(number_line(numbers, m))
    if all_data:
        console.print(
            f"Fitted on all {counted(split.seen_train.n, 'comparison')} of "
            f"{counted(split.seen_train.n_users, 'user')} (--all-data): no held-out numbers; "
            "they come from `lore evaluate` or `lore fit` on the dataset's split."
        )
    given = model.rank != "auto"  # the rank asked for, reported as given
    if sel:
        console.print(
            (f"Rank {model.rank} (given); chosen" if given else "Chosen")
            + f" by {sel['folds']}-fold cross-validation, holding out "
            f"{sel.get('holdout', 'comparisons')} ({sel['n_fits']} fits"
            + (f", {sel['refined']} cells refined" if sel.get("refined") else "")
            + ", "
            f"{sel['seconds']:.1f} s, {sel['rule']} rule): "
            + ("" if given and sel["rank"] == model.rank else f"rank {sel['rank']}, ")
            + f"weight_decay {sel['weight_decay']:g}"
            + (
                f", {model.weight_space_} weights at personalisation strength "
                f"{model.personalization_:g}"
                if model.rank_ > 1
                else ""
            )
        )
        for note in sel.get("notes", []):
            console.print(f"[dim]search: {note}[/dim]")
    elif given:
        console.print(
            f"Rank {model.rank} and weight_decay {model.config_.weight_decay:g} given: nothing "
            "was cross-validated."
        )
    cal = model.history_.get("calibration")
    if cal and "why" not in cal:
        console.print(
            f"Margins calibrated on the held-out users: rewards and probabilities x "
            f"{cal['margin_scale']:.3g} (margin_scale)"
        )
    if moved:
        console.print(
            f"The replaced model's serving database (onboarded users) was moved to "
            f"{moved[0]}: its weights belong to the old basis; its comparisons can be "
            "onboarded again."
        )
    for problem in model.history_.get("no_signal", []):
        console.print(f"[yellow]warning:[/yellow] the model may have learned nothing: {problem}")
    if report.groups:
        print_personalization(report, console)
    else:
        console.print(f"[bold]{report.summary}[/bold]")
    console.print(
        f"Wrote {out}/ (rank {model.rank_}, {counted(len(model.users_), 'user')}, "
        f"{seconds:.1f} s fit)"
    )
    if as_json:
        print_json(
            {
                "out": str(out),
                "dataset": str(dataset),
                "all_data": all_data,
                "backbone": model.backbone,
                "recipe": model.recipe,
                "rank": model.rank_,
                "requested_rank": model.rank,
                "weight_decay": model.config_.weight_decay,
                "margin_scale": model.margin_scale_,
                "weights": model.weight_space_,
                "personalization": model.personalization_,
                "personalizes": model.personalizes,
                "personalization_report": report.to_dict(),
                "n_users": len(model.users_),
                "selection": selection_summary(model.history_),
                "accuracy": dict(numbers),
                "diagnostics": diagnostics(model.history_, warned),
                "fit_seconds": round(seconds, 3),
                "moved_database": [str(p) for p in moved],
            }
        )


def selection_summary(history: FitHistory) -> dict | None:
    """How the rank and ridge were chosen (without the curve), or None when not searched."""
    sel = history.get("selection")
    if not sel:
        return None
    keys = ("folds", "n_fits", "seconds", "rule", "rank", "weight_decay")
    # what a fold held out; selections saved before the field existed held out comparisons
    return {**{k: sel.get(k) for k in keys}, "holdout": sel.get("holdout", "comparisons")}


def diagnostics(history: FitHistory, warned: list[str] | None = None) -> dict:
    """What a fit's history says about its health: validation, no-signal problems,
    convergence (L-BFGS; None for the published Adam loop), pruned columns; warnings raised."""
    out = {
        "validated": history.get("validated"),
        "no_signal": list(history.get("no_signal", [])),
        "converged": history.get("converged"),
        "iterations": history.get("iterations"),
        "pruned_columns": history.get("pruned_columns"),
    }
    if warned is not None:
        out["warnings"] = list(warned)
    return out


EVALUATE_KEYS = {
    "dataset": to("dataset", Path),
    "ranks": to("ranks", as_list_text),
    "alphas": to("alphas", as_list_text),
    "recipe": to("recipe"),
    "shots": to("shots", as_list_text),
    "shots_rank": to("shots_rank"),
    "trials": to("trials"),
    "active": to("active"),
    "active_batch": to("active_batch"),
    "group_by": to("group_by", as_list_text),
    "seed": to("seed"),
}


@one_line_errors
@fit_options(exclude=("recipe", "seed", "alpha"))
@config_option("evaluate", EVALUATE_KEYS)
def evaluate_cmd(
    dataset: Path | None = typer.Argument(
        None,
        help="Dataset folder (lore prepare ...) with embeddings (lore embed); with --config, "
        "the one it records.",
    ),
    out: Path = typer.Option(Path("lore-eval"), "--out", "-o", help="Report folder."),
    ranks: str = typer.Option("0..6", help="Ranks, e.g. '0..10' or '0,1,5,10'."),
    alphas: str = typer.Option("0", help="Reference-pull weights, e.g. '0,1e4'."),
    recipe: str = RECIPE,
    shots: str = typer.Option("5,10,20,30,40,50", help="Shots per unseen user ('' = skip)."),
    shots_rank: int | None = typer.Option(
        None,
        help="Rank for the shots sweep (default: the smallest rank within 0.005 of the best "
        "seen-user test accuracy).",
    ),
    trials: int = typer.Option(20, help="Random draws of the shots per value."),
    active: int = active_option(0),
    active_batch: int = ACTIVE_BATCH,
    group_by: str | None = GROUP_BY,
    seed: int = SEED,
    device: str = DEVICE,
    threads: str = THREADS,
    progress: bool = PROGRESS,
    as_json: bool = JSON_OUT,
    per_user: Path | None = typer.Option(
        None,
        "--per-user",
        help="Also write every user's pooled / shared / personal accuracy to this file "
        "(.csv or .jsonl); the report folder has per_user.csv either way.",
    ),
    fit_settings: dict | None = None,
) -> None:
    """The published protocol: four numbers for every (rank, alpha), then the shots sweep.

    --group-by COLS adds the group and tail reports at the selected rank (or --shots-rank):
    every test user's accuracy under the pooled rank-1 reward, the shared model (the basis at
    the population's mean weights) and their own weights, by group of the users table.

    --active N adds the active-learning sweep at the same rank: unseen-user accuracy after
    1..N questions chosen from each user's few-shot pool by expected information gain,
    against random questions (active.csv, active.png). --json prints the rank rows, the
    selected rank, the shots and active rows and the notes as JSON on stdout (the tables go
    to stderr).
    """
    from lore_rm.cli.groups import parse_columns, users_for, write_group_files
    from lore_rm.embed.split import load_split
    from lore_rm.evaluate.groups import group_tables
    from lore_rm.evaluate.protocols import run_protocol
    from lore_rm.evaluate.report import (
        active_calibration_table,
        active_table,
        check_report_out,
        print_tables,
        rank_table,
        shots_table,
        write_sweep_report,
    )

    if dataset is None:
        raise typer.BadParameter("give a dataset folder, or --config FILE", param_hint="DATASET")
    console = Console(stderr=as_json)
    config_threads = use_threads(threads)
    rank_list = parse_int_list(ranks, "--ranks")
    alpha_list = parse_float_list(alphas, "--alphas")
    shot_list = parse_int_list(shots, "--shots") if shots.strip() else []
    columns = parse_columns(group_by)
    settings = dict(fit_settings or {})
    config = {
        "command": "evaluate",
        "dataset": str(dataset),
        "ranks": rank_list,
        "alphas": alpha_list,
        "recipe": recipe,
        "settings": settings,
        "shots": shot_list,
        "shots_rank": shots_rank,
        "trials": trials,
        "active": active,
        "active_batch": active_batch,
        "group_by": columns,
        "seed": seed,
        "threads": config_threads,
    }
    groups = None
    with collected_warnings() as warned:
        check_report_out(out)
        users = users_for(dataset, columns) if columns else None
        split, backbone = load_split(dataset)
        config["backbone"] = backbone
        if split.reference_head is None and 0 in rank_list:
            rank_list = [k for k in rank_list if k != 0]
            config["ranks"] = rank_list
            config["ranks_skipped"] = [0]
            console.print(
                f"Rank 0 skipped: the backbone {backbone.get('name')!r} has no reward head "
                "(rank 0 is the backbone's own reward)."
            )
            if not rank_list:
                raise LoreError("--ranks holds only rank 0, and the backbone has no reward head")
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
            active=active,
            active_batch=active_batch,
            **settings,
        )
        rows, shot_rows = result.rows, result.shot_rows
        if columns:
            groups = _groups(result, shots_rank, split, users, config, device)
    print_tables(rank_table(rows, title=f"{dataset} — recipe '{recipe}'"), console=console)
    selected_rank = _selected_line(result, shots_rank, console)
    if shot_rows:
        print_tables(shots_table(shot_rows), console=console)
    report = result.personalization
    if report is not None:
        print_personalization(report, console)
        if per_user is not None:
            write_rows(per_user, report.per_user)
    if result.active_rows:
        print_tables(
            active_table(result.active_rows),
            active_calibration_table(result.active_rows),
            console=console,
        )
    if groups is not None:
        print_tables(*group_tables(groups[0]), console=console)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    config["notes"] = result.notes
    names = write_sweep_report(
        out,
        rows=rows,
        shot_rows=shot_rows,
        config=config,
        title=f"{Path(dataset).name} (recipe '{recipe}')",
        active_rows=result.active_rows,
        personalization=report,
        selected_rank=selected_rank,
        extra={
            "cross_validated_rank": result.cross_validated,
            **({} if groups is None else {"groups": groups[0].to_dict()}),
        },
    )
    if groups is not None:
        names += write_group_files(out, groups[0], groups[1], users)
    console.print(f"Wrote {out}/: {' '.join(names)}")
    if as_json:
        selected = result.selected
        swept_at = None  # the rank the shots sweep ran at
        if shot_rows:
            swept_at = shots_rank if shots_rank is not None else selected["rank"]  # type: ignore[index]
        print_json(
            {
                "out": str(out),
                "files": names,
                "dataset": str(dataset),
                "recipe": recipe,
                "ranks": rows,
                "ranks_skipped": config.get("ranks_skipped", []),
                "selected": None
                if selected is None
                else {"rank": selected["rank"], "alpha": selected["alpha"]},
                "cross_validated_rank": result.cross_validated,
                "shots_rank": swept_at,
                "shots": shot_rows,
                "personalization": None if report is None else report.to_dict(),
                "active": result.active_rows,
                "notes": result.notes,
                "groups": None if groups is None else groups[0].to_dict(),
                "warnings": warned,
            }
        )


def _selected_line(result, shots_rank: int | None, console: Console) -> int | None:
    """Print which rank the protocol selected and why, and which rank ``lore fit``'s
    cross-validation picks among the same fits (``result.cross_validated``); the rank the
    report is about."""
    from lore_rm.evaluate.rank_choice import WHY_THEY_DIFFER

    selected = result.selected
    if selected is not None:
        console.print(
            f"Selected rank {selected['rank']}: the smallest learned rank within 0.005 of the "
            "best seen-user test accuracy (seen users' held-out prompts choose; unseen users "
            "never do)."
        )
    cv = result.cross_validated
    if cv is not None:
        same = selected is not None and cv["rank"] == selected["rank"]
        console.print(
            f"lore fit's rule (cross-validated log-loss of held-out users, {cv['rule']}) "
            f"picks rank {cv['rank']} (weight_decay {cv['weight_decay']:g}) among these fits"
            + ("." if same else f": {WHY_THEY_DIFFER}.")
        )
    if shots_rank is not None:
        console.print(f"The shots sweep and the personalisation report use rank {shots_rank}.")
        return shots_rank
    return None if selected is None else int(selected["rank"])


def print_personalization(report, console: Console) -> None:
    """The personalisation report's table and its one-sentence summary."""
    from lore_rm.evaluate.report import personalization_table, print_tables

    print_tables(personalization_table(report), console=console)
    console.print(f"[bold]{report.summary}[/bold]")


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rows as CSV (``.csv``) or JSON Lines (anything else), written atomically."""
    import json

    from lore_rm.evaluate.report import rows_to_csv
    from lore_rm.io import atomic_write_text

    if path.suffix.lower() == ".csv":
        text = rows_to_csv(rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write_text(path, text)


def _groups(result, shots_rank, split, users, config: dict, device: str):
    """--group-by: the group report at the selected rank and alpha (or --shots-rank and the
    first alpha), as the shots sweep chooses them."""
    from lore_rm.cli.groups import evaluate_groups

    if shots_rank is not None:
        rank, alpha = shots_rank, config["alphas"][0]
    elif result.selected is not None:
        rank, alpha = result.selected["rank"], result.selected["alpha"]
    else:
        raise LoreError("--group-by needs a learned rank: add ranks >= 1 to --ranks")
    config["group_rank"] = rank
    return evaluate_groups(
        split,
        rank,
        users,
        config["group_by"],
        seed=config["seed"],
        recipe=config["recipe"],
        device=device,
        **{**config["settings"], "alpha": alpha},
    )


def check_model_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing, non-empty model folder unless ``overwrite`` (before any work)."""
    if not out.exists() or overwrite:
        return
    if not out.is_dir():
        raise LoreError(f"{out}: exists and is not a folder; choose another --out")
    if any(out.iterdir()):
        db = out / DB_FILE
        held = f" and a serving database ({db.name}) of onboarded users" if db.exists() else ""
        raise LoreError(
            f"{out}: already exists and holds files{held}; pass --overwrite to replace it, "
            "or choose another --out"
        )


def set_aside_database(out: Path) -> list[Path]:
    """Move a serving database out of a model folder about to be replaced; the new paths."""
    if not (out / DB_FILE).exists():
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for f in sorted(out.glob(f"{DB_FILE}*")):  # the database and its -wal / -shm files
        target = out.parent / f"{out.name}.{stamp}.{f.name}"
        f.rename(target)
        moved.append(target)
    return moved


def _rank(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"--rank must be an integer or 'auto', got {text!r}") from None


def plot_selection(selection: dict, path: Path):
    """Cross-validated log-loss against the ridge, one line per rank; the choice marked. The
    y axis shows the losses that decide the choice; the figure is returned (closed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lore_rm.evaluate.axes import focus_losses, legend_beside
    from lore_rm.io import atomic_write

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for k in sorted({r["rank"] for r in selection["rows"]}):
        rows = sorted(
            (r for r in selection["rows"] if r["rank"] == k), key=lambda r: r["weight_decay"]
        )
        ax.errorbar(
            [r["weight_decay"] for r in rows],
            [r["cv_loss"] for r in rows],
            yerr=[r["cv_loss_se"] for r in rows],
            marker="o",
            capsize=2,
            label=f"rank {k}",
        )
    chosen = next(r for r in selection["rows"] if r["chosen"])
    ax.plot([chosen["weight_decay"]], [chosen["cv_loss"]], "k*", ms=14, label="chosen")
    ax.axhline(0.6931, color="grey", ls=":", lw=1, label="ln 2 (coin)")
    ax.set_xscale("log")
    ax.set_xlabel("weight_decay (ridge on the standardised basis)")
    ax.set_ylabel("cross-validated log-loss")
    ax.set_title(f"Model selection ({selection['folds']} folds, {selection['rule']} rule)")
    rows = selection["rows"]
    above = focus_losses(
        ax,
        [r["cv_loss"] for r in rows],
        [r["cv_loss_se"] for r in rows],
        chosen["cv_loss"] + chosen["cv_loss_se"],
    )
    if above:
        worst = max(r["cv_loss"] for r in rows)
        ax.set_title(f"{ax.get_title()}\n{above} weaker fits above the view (up to {worst:.3g})")
    legend_beside(ax, fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return fig
