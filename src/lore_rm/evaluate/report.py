"""Results people compare: terminal tables, JSON/CSV files and plots."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from lore_rm.errors import DataError
from lore_rm.evaluate.axes import count_axis, legend_beside, spread_or_none
from lore_rm.io import atomic_folder, atomic_write, atomic_write_text
from lore_rm.metrics import METRICS

LABELS = {
    "train": "train",
    "seen_test": "seen users / unseen prompts",
    "fewshot_train": "few-shot train",
    "unseen_test": "unseen users / unseen prompts",
}


def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def rank_table(rows: Sequence[dict], oracle: dict | None = None, title: str = "") -> Table:
    table = Table(title=title or "Pairwise accuracy (mean over users)")
    table.add_column("rank", justify="right")
    show_alpha = len({r.get("alpha", 0.0) for r in rows}) > 1
    if show_alpha:
        table.add_column("alpha", justify="right")
    for m in METRICS:
        table.add_column(LABELS[m], justify="right")
    table.add_column("fit s", justify="right")
    for r in rows:
        name = {0: "0 (reference)", 1: "1 (pooled BT)"}.get(r["rank"], str(r["rank"]))
        cells = [name] + ([f"{r['alpha']:g}"] if show_alpha else [])
        cells += [_fmt(r.get(m)) for m in METRICS] + [f"{r.get('fit_seconds', 0):.2f}"]
        table.add_row(*cells)
    if oracle:
        cells = ["oracle"] + ([""] if show_alpha else [])
        table.add_row(*cells, *[_fmt(oracle.get(m)) for m in METRICS], "", style="bold")
    return table


def shots_table(rows: Sequence[dict]) -> Table:
    table = Table(title="Unseen-user accuracy vs shots per user")
    for col in ("rank", "shots", "mean", "std over trials", "trials"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["rank"]),
            str(r["shots"]),
            _fmt(r["unseen_test"]),
            _fmt(r["unseen_test_std"]),
            str(r["trials"]),
        )
    return table


def active_table(rows: Sequence[dict]) -> Table:
    table = Table(title="Unseen-user accuracy vs questions asked (active learning)")
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    table.add_column("questions", justify="right")
    for c in criteria:
        table.add_column(f"{c} (mean ± std)", justify="right")
    cell = {(r["criterion"], r["questions"]): r for r in rows}
    for q in sorted({r["questions"] for r in rows}):
        table.add_row(
            str(q),
            *(
                f"{_fmt(cell[(c, q)]['unseen_test'])} ± {_fmt(cell[(c, q)]['unseen_test_std'])}"
                if (c, q) in cell
                else "—"
                for c in criteria
            ),
        )
    return table


def active_calibration_table(rows: Sequence[dict]) -> Table:
    """ECE of the posterior-integrated probabilities (and, on planted data, the coverage of
    the true margins by the 90% intervals) against questions asked, per criterion."""
    has_truth = any(r.get("coverage_90") is not None for r in rows)
    title = "Unseen-user calibration vs questions asked: ECE" + (
        " / 90% interval coverage of the true margins" if has_truth else ""
    )
    table = Table(title=title)
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    table.add_column("questions", justify="right")
    for c in criteria:
        table.add_column(c, justify="right")
    cell = {(r["criterion"], r["questions"]): r for r in rows}

    def shown(r: dict) -> str:
        text = _fmt(r["ece"])
        return text + (f" / {_fmt(r['coverage_90'])}" if has_truth else "")

    for q in sorted({r["questions"] for r in rows}):
        table.add_row(str(q), *(shown(cell[(c, q)]) if (c, q) in cell else "—" for c in criteria))
    return table


def print_tables(*tables: Table, console: Console | None = None) -> None:
    console = console or Console()
    for t in tables:
        console.print(t)


def rows_to_csv(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


#: the dataset role each of the four numbers is measured on
ROLE_OF = dict(
    zip(METRICS, ("seen-train", "seen-test", "unseen-fewshot", "unseen-test"), strict=True)
)


def number_line(numbers: Mapping, metric: str) -> str:
    """``label  mean ± std``, or why there is no number (a role without comparisons)."""
    value = numbers[metric]
    if value != value:  # nan: the role holds no comparisons
        return f"{LABELS[metric]:32s} —  (the dataset has no {ROLE_OF[metric]} comparisons)"
    return f"{LABELS[metric]:32s} {value:.3f} ± {numbers[metric + '_std']:.3f}"


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def json_default(o):
    """``json.dumps`` ``default=``: mappings, arrays / tensors (``tolist``) and paths."""
    if isinstance(o, Mapping):
        return dict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def user_interval(row: Mapping, metric: str) -> float:
    """Half-width of the normal 95% interval of a mean over users: 1.96 std / sqrt(users)
    (0 when the row does not say how many users)."""
    n = row.get(f"{metric}_users") or 0
    std = row.get(f"{metric}_std")
    if not n or std is None or std != std:
        return 0.0
    return 1.96 * float(std) / math.sqrt(n)


def plot_ranks(
    rows: Sequence[dict],
    path: Path,
    oracle: dict | None = None,
    title: str = "",
    selected: int | None = None,
):
    """Every metric against the rank, with 95% intervals over users; the selected rank
    marked. Returns the figure (closed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    alphas = sorted({r.get("alpha", 0.0) for r in rows})
    for alpha in alphas:
        sub = sorted(
            (r for r in rows if r.get("alpha", 0.0) == alpha or r["rank"] == 0),
            key=lambda r: r["rank"],
        )
        ks = [r["rank"] for r in sub]
        suffix = f" (alpha={alpha:g})" if len(alphas) > 1 else ""
        for m, style in zip(METRICS, ("-o", "-s", "--^", "--D"), strict=True):
            ax.errorbar(
                ks,
                [r[m] for r in sub],
                yerr=[user_interval(r, m) for r in sub],
                fmt=style,
                capsize=2,
                label=LABELS[m] + suffix,
                markersize=4,
            )
    if selected is not None:
        ax.axvline(selected, color="tab:red", lw=1, ls="--", label=f"selected rank {selected}")
    if oracle:
        ax.axhline(oracle["unseen_test"], color="k", lw=1, ls=":", label="oracle (unseen users)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="-.", label="chance")
    ax.set_xlabel("rank K (0 = reference head, 1 = pooled Bradley–Terry)")
    ax.set_ylabel("pairwise accuracy (mean over users)")
    ax.set_title(title or "Accuracy vs rank")
    ax.set_xticks(sorted({r["rank"] for r in rows}))
    legend_beside(ax)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_shots(
    rows: Sequence[dict],
    path: Path,
    oracle: dict | None = None,
    baselines: Mapping[str, float] | None = None,
):
    """Unseen-user accuracy against shots (a log axis ticked at the shots used);
    ``baselines`` (label -> accuracy) are drawn as horizontal lines: the shared reward (every
    new user at the population's mean weights, i.e. 0 shots) and the pooled one."""
    curves = {
        f"rank {rank}": [r for r in rows if r["rank"] == rank]
        for rank in sorted({r["rank"] for r in rows})
    }
    xlabel = "comparisons per new user (shots)"
    title = "Few-shot personalisation"
    return _plot_curves(curves, "shots", xlabel, title, path, oracle, baselines or {}, log_x=True)


def plot_active(rows: Sequence[dict], path: Path, oracle: dict | None = None):
    curves: dict[str, list[dict]] = {}
    for r in rows:
        curves.setdefault(r["criterion"], []).append(r)
    curves = {f"{c} (trials {sub[0]['trials']})": sub for c, sub in curves.items()}
    title = f"Active question selection (rank {rows[0]['rank']})"
    return _plot_curves(curves, "questions", "questions asked per new user", title, path, oracle)


def _plot_curves(
    curves: Mapping[str, Sequence[dict]],
    x: str,
    xlabel: str,
    title: str,
    path: Path,
    oracle: dict | None,
    baselines: Mapping[str, float] | None = None,
    log_x: bool = False,
):
    """Unseen-user accuracy (mean ± std over trials) against ``x``, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, sub in curves.items():
        ax.errorbar(
            [r[x] for r in sub],
            [r["unseen_test"] for r in sub],
            yerr=spread_or_none([r["unseen_test_std"] for r in sub], sub[0].get("trials")),
            fmt="-o",
            capsize=3,
            markersize=4,
            label=label,
        )
    for (label, value), style in zip((baselines or {}).items(), ("--", "-."), strict=False):
        ax.axhline(value, color="tab:grey", lw=1, ls=style, label=label)
    if oracle:
        ax.axhline(oracle["unseen_test"], color="k", lw=1, ls=":", label="oracle")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("unseen-user test accuracy")
    ax.set_title(title)
    if log_x:
        count_axis(ax, [r[x] for sub in curves.values() for r in sub])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path):
    """Write ``fig`` to ``path``, close it and return it (its axes can still be read)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120))
    plt.close(fig)
    return fig


def check_report_out(out: Path) -> None:
    """A report replaces an earlier report (a folder with report.json) or an empty folder only."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / "report.json").is_file()):
        raise DataError(
            f"{out}: exists and is not a lore report folder (no report.json), so it is not "
            "replaced; choose another --out"
        )


def write_sweep_report(
    out: Path,
    *,
    rows: Sequence[dict],
    shot_rows: Sequence[dict],
    config: dict,
    oracle: dict | None = None,
    title: str = "",
    extra: dict | None = None,
    active_rows: Sequence[dict] = (),
    personalization=None,
    selected_rank: int | None = None,
) -> list[str]:
    """report.json, config.json, ranks.csv, ranks.png (+ shots.csv, shots.png, active.csv,
    active.png); the names.

    The folder is written whole under a temporary name and renamed over ``out``, so no file
    of an earlier report survives beside the new one.
    """
    check_report_out(out)
    report: dict = {
        "config": config,
        "oracle": oracle,
        "ranks": list(rows),
        "shots": list(shot_rows),
    }
    if active_rows:
        report["active"] = list(active_rows)
    report["selected_rank"] = selected_rank
    if personalization is not None:
        report["personalization"] = personalization.to_dict(per_user=True)
    report.update(extra or {})
    names = ["report.json", "config.json", "ranks.csv", "ranks.png"]
    with atomic_folder(out, overwrite=True) as tmp:
        write_json(tmp / "report.json", report)
        write_json(tmp / "config.json", config)
        atomic_write_text(tmp / "ranks.csv", rows_to_csv(rows))
        plot_ranks(rows, tmp / "ranks.png", oracle, title, selected_rank)
        if personalization is not None and personalization.per_user:
            atomic_write_text(tmp / "per_user.csv", rows_to_csv(personalization.per_user))
            names.append("per_user.csv")
        if shot_rows:
            atomic_write_text(tmp / "shots.csv", rows_to_csv(shot_rows))
            plot_shots(shot_rows, tmp / "shots.png", oracle, shot_baselines(personalization))
            names += ["shots.csv", "shots.png"]
        if active_rows:
            atomic_write_text(tmp / "active.csv", rows_to_csv(active_rows))
            plot_active(active_rows, tmp / "active.png", oracle)
            names += ["active.csv", "active.png"]
    return names


def shot_baselines(report) -> dict[str, float]:
    """The shared (0 shots) and pooled accuracies of new users, from a personalisation
    report (empty without one)."""
    new = [g for g in (report.groups if report is not None else []) if g.group == "new"]
    if not new:
        return {}
    a = new[0].accuracy
    return {
        "shared reward (0 shots: mean weights)": a["shared"],
        "pooled rank 1": a["pooled"],
    }


def personalization_table(report) -> Table:
    """The personalisation report as a table: per group, pooled / shared / personal accuracy
    (and the reference head's), the gain personal - shared with its 95% interval over users
    and how many users their own weights serve worse than the shared reward (report.json
    has the rest: the distributions, the bottom decile, every user's row)."""
    has_ref = any("reference" in g.accuracy for g in report.groups)
    table = Table(
        title=f"Does personalisation pay? (strength {report.strength:g})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    variants = [*(["reference"] if has_ref else []), "pooled", "shared", "personal"]
    table.add_column("users", no_wrap=True)
    for v in variants:
        table.add_column("ref" if v == "reference" else v, justify="right", no_wrap=True)
    for col in ("gain", "95% CI", "worse"):
        table.add_column(col, justify="right", no_wrap=True)
    for g in report.groups:
        gain = g.gain
        label = "seen" if g.group == "seen" else f"new, {g.shots or 'all'}"
        table.add_row(
            label,
            *[_fmt(g.accuracy.get(v)) for v in variants],
            f"{gain['mean']:+.3f}",
            f"{gain['lower']:+.3f},{gain['upper']:+.3f}",
            str(len(g.worse_than_shared)),
        )
    counts = {g.group: g.users for g in report.groups}
    table.caption = (
        f"{counts.get('seen', 0)} seen users on held-out prompts; {counts.get('new', 0)} new "
        "users after N comparisons each. gain: personal - shared, per user (95% bootstrap "
        "interval over users); worse: users their own weights serve worse than the shared "
        "reward"
    )
    return table
