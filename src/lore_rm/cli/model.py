"""``lore model info``: what a model folder holds and how it was fitted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.table import Table

from lore_rm.cli.common import one_line_errors, print_json
from lore_rm.errors import ModelFormatError
from lore_rm.fit.history import FitHistory

model_app = typer.Typer(help="Inspect model folders.", no_args_is_help=True)

DB = typer.Option(
    None, help="lore serve database with onboarded users (default: the one in the model folder)."
)


def model_summary(model_dir: Path, db: Path | None = None) -> dict:
    """The model's shape, users (its own and the serve database's), backbone, recipe, fit
    settings, and -- when ``training.json`` is there -- the selection and diagnostics."""
    from lore_rm.cli.fit import diagnostics, selection_summary
    from lore_rm.constants import MODEL_CONFIG_FILE, TRAINING_FILE
    from lore_rm.fit.model import LowRankReward
    from lore_rm.fit.personalizes import does_not_personalize
    from lore_rm.serve.export import load_with_served_users
    from lore_rm.serve.service import default_db_path

    if not model_dir.is_dir():
        what = "is not a folder" if model_dir.exists() else "no such folder"
        raise ModelFormatError(f"{model_dir}: {what}; expected a lore-rm model folder")
    own = LowRankReward.from_pretrained(model_dir)  # checks the format
    record = json.loads((model_dir / MODEL_CONFIG_FILE).read_text("utf-8"))
    db_path = Path(db) if db is not None else default_db_path(model_dir)
    served, _, onboarded = load_with_served_users(own, db_path)
    known = set(own.users_)
    summary = {
        "path": str(model_dir),
        "lore_rm_version": record.get("lore_rm_version"),
        "format_version": record.get("format_version"),
        "rank": own.rank_,
        "requested_rank": record.get("requested_rank", own.rank_),
        "n_components": record.get("n_components"),
        "d": own.d_,
        "scale": own.scale_,
        "margin_scale": own.margin_scale_,
        "weights": own.weight_space_,
        "personalization": own.personalization_,
        "personalizes": own.personalizes,
        "why_not_personalized": does_not_personalize(own),
        "backbone": own.backbone,
        "recipe": own.recipe,
        "seed": own.seed,
        "settings": dict(own.settings),
        "fit_config": own.config_.to_dict(),
        "users": {
            "model": len(own.users_),
            "onboarded": len(onboarded),
            "onboarded_new": sum(u not in known for u in onboarded),
            "total": len(served.users_),
            "database": str(db_path) if db_path.is_file() else None,
        },
        "training": None,
    }
    training_path = model_dir / TRAINING_FILE
    if training_path.is_file():
        try:
            training = json.loads(training_path.read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"{training_path}: not valid JSON ({exc})") from None
        history = cast(FitHistory, training.get("history") or {})  # as lore fit wrote it
        summary["training"] = {
            "dataset": training.get("dataset"),
            "backbone": training.get("backbone"),
            "fit_seconds": training.get("fit_seconds"),
            "accuracy": training.get("accuracy"),
            "personalization": _report_summary(training.get("personalization")),
            "selection": selection_summary(history),
            "diagnostics": diagnostics(history),
        }
    return summary


def _report_summary(report: dict | None) -> dict | None:
    """The personalisation report of training.json without its per-user rows."""
    if not report:
        return None
    return {k: v for k, v in report.items() if k != "per_user"}


@model_app.command("info")
@one_line_errors
def info_cmd(
    model_dir: Path = typer.Argument(
        ..., help="A lore-rm model folder (lore fit / save_pretrained)."
    ),
    db: Path | None = DB,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rank, d, users (the model's and the serve database's), backbone, recipe, fit settings,
    and how the rank and ridge were chosen (from training.json, when lore fit wrote it)."""
    summary = model_summary(model_dir, db)
    if as_json:
        print_json(summary)
    else:
        print_model_summary(summary)


def print_model_summary(s: dict) -> None:
    console = Console()
    t = Table("model", str(s["path"]), show_header=True)
    t.add_row("written by", f"lore-rm {s['lore_rm_version'] or '?'} (format {s['format_version']})")
    t.add_row("backbone", str(s["backbone"] or "unspecified"))
    t.add_row("recipe", f"{s['recipe']} (seed {s['seed']})")
    rank = f"{s['rank']}" + (
        f" (requested {s['requested_rank']})" if s["requested_rank"] != s["rank"] else ""
    )
    t.add_row("rank", f"{rank}, {s['n_components']} basis column(s) kept")
    t.add_row("d, scale", f"{s['d']}, {s['scale']:g}")
    t.add_row(
        "margin_scale",
        f"{s['margin_scale']:g}"
        + (" (calibrated on held-out users)" if s["margin_scale"] != 1 else " (uncalibrated)"),
    )
    space = "simplex" if s["weights"] == "simplex" else "signed (population + offsets)"
    if s["personalizes"]:
        t.add_row("personalisation", f"strength {s['personalization']:g}, {space} weights")
    else:
        t.add_row("personalisation", f"none: {s['why_not_personalized']}")
    u = s["users"]
    users = f"{u['total']} ({u['model']} in the model"
    if u["database"]:
        users += f"; {u['onboarded']} onboarded in {u['database']}, {u['onboarded_new']} new"
    else:
        users += "; no serve database"
    t.add_row("users", users + ")")
    tr = s["training"]
    if tr is None:
        t.add_row("training", "no training.json (not written by lore fit)")
    else:
        t.add_row("dataset", str(tr["dataset"]))
        sel = tr["selection"]
        if sel:
            t.add_row(
                "selection",
                f"rank {sel['rank']}, weight_decay {sel['weight_decay']:g} "
                f"({sel['folds']}-fold CV holding out {sel.get('holdout', 'comparisons')}, "
                f"{sel['n_fits']} fits"
                + (f" + {sel['reused_fits']} reused" if sel.get("reused_fits") else "")
                + f", {sel['seconds']:.1f} s, "
                f"{sel['rule']} rule)",
            )
        dg = tr["diagnostics"]
        if dg["converged"] is not None:
            t.add_row("converged", f"{'yes' if dg['converged'] else 'NO'} ({dg['iterations']} it.)")
        for problem in dg["no_signal"]:
            t.add_row("[yellow]warning[/yellow]", f"may have learned nothing: {problem}")
        for key, value in (tr["accuracy"] or {}).items():
            if not key.endswith("_std"):
                std = tr["accuracy"].get(f"{key}_std")
                t.add_row(f"accuracy: {key}", f"{value:.3f} ± {std:.3f}" if std is not None else "")
        if tr.get("personalization"):
            t.add_row("personalisation pays?", tr["personalization"]["summary"])
        if tr["fit_seconds"] is not None:
            t.add_row("fit seconds", f"{tr['fit_seconds']:.1f}")
    console.print(t)
    settings = Table("fit setting", "value", title="Fit settings (config_)")
    for key, value in s["fit_config"].items():
        settings.add_row(key + (" *" if key in s["settings"] else ""), str(value))
    console.print(settings)
    if s["settings"]:
        console.print("* set explicitly (the rest are the recipe's defaults)")
