"""Group and tail reports: which users, and which groups of users, a model serves badly.

A pure function over **per-user rows** -- user id -> accuracy under each model (``pooled``:
one pooled rank-1 reward; ``shared``: the basis at the population's mean weights;
``personal``: each user's own weights), optionally each model's mean log-loss
(``{model}_loss``) and a ``population`` -- joined with the dataset's users table
(:mod:`lore_rm.data.users`). Where the rows come from does not matter here
(:mod:`lore_rm.evaluate.personal_rows` builds them from fitted models).

For every column grouped by, each group gets: its users, the mean over its users of each
model's accuracy, and the personalisation gain ``personal - shared`` (the mean of the
per-user differences) with a bootstrap interval over the group's users
(:func:`lore_rm.metrics.bootstrap_mean`); the **worst group** of a column is the one with the
lowest accuracy (under each model; among groups with at least ``min_users`` users): a
group whose preference the pooled and shared models miss is their worst group and gains the
most from personalisation. Over all users,
each model's tails: the 10th percentile of per-user accuracy, the mean accuracy of the users
at or below it (the bottom decile), and the CVaR of the per-user loss (the mean loss of the
worst ``tail`` share of users, the boundary user counted fractionally; the loss is the
user's mean log-loss when the rows give it, else their error rate ``1 - accuracy``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lore_rm.errors import DataError
from lore_rm.metrics import MeanInterval, bootstrap_mean

MODELS = ("pooled", "shared", "personal")
MISSING = "(missing)"  # the group of users the users table gives no value for

PerUserRows = Mapping[str, Mapping[str, object]]


@dataclass(frozen=True)
class Tails:
    """One model's per-user tail over every user."""

    model: str
    users: int
    mean: float  # mean per-user accuracy
    p10: float  # the ``tail`` quantile of per-user accuracy
    bottom_mean: float  # mean accuracy of the users at or below it
    cvar_loss: float  # mean loss of the worst ``tail`` share of users
    loss: str  # "log-loss" or "error rate"
    tail: float = 0.1

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GroupRow:
    """One group of one column."""

    column: str
    group: str
    users: int
    accuracy: dict[str, float]  # model -> mean over the group's users
    gain: MeanInterval  # personal - shared, per user, with its bootstrap interval
    worst_for: tuple[str, ...] = ()  # the models under which this is the column's worst group
    comparisons: int | None = None  # the sum of the rows' "comparisons", when they give it

    def to_dict(self) -> dict:
        out: dict[str, object] = {"column": self.column, "group": self.group, "users": self.users}
        if self.comparisons is not None:
            out["comparisons"] = self.comparisons
        out.update(self.accuracy)
        out.update(gain=self.gain.mean, gain_lower=self.gain.lower, gain_upper=self.gain.upper)
        out["worst_for"] = ",".join(self.worst_for)
        return out


@dataclass
class GroupReport:
    """What :func:`group_report` found."""

    group_by: list[str]
    models: list[str]
    users: int
    rows: list[GroupRow]
    tails: dict[str, Tails]
    gain: MeanInterval  # personal - shared over every user
    # column -> model -> the group with the lowest accuracy under that model
    worst: dict[str, dict[str, str]] = field(default_factory=dict)
    level: float = 0.95
    min_users: int = 1

    def rows_of(self, column: str) -> list[GroupRow]:
        return [r for r in self.rows if r.column == column]

    def to_dict(self) -> dict:
        return {
            "group_by": self.group_by,
            "models": self.models,
            "users": self.users,
            "level": self.level,
            "min_users": self.min_users,
            "gain": self.gain.to_dict(),
            "groups": [r.to_dict() for r in self.rows],
            "worst": self.worst,
            "tails": {m: t.to_dict() for m, t in self.tails.items()},
        }


def _attributes(users, ids: Sequence[str], columns: Sequence[str]) -> dict[str, list[str]]:
    """column -> each user's group (``MISSING`` where there is no value)."""
    if users is None:
        table: dict[str, dict[str, object]] = {}
        available: list[str] = []
    elif isinstance(users, pa.Table):
        if "user_id" not in users.column_names:
            raise DataError("the users table has no 'user_id' column")
        records = users.to_pylist()
        table = {str(r["user_id"]): r for r in records}
        available = [c for c in users.column_names if c != "user_id"]
    else:
        table = {str(k): dict(v) for k, v in users.items()}
        available = sorted({c for v in table.values() for c in v})
    out = {}
    for col in columns:
        if col not in available:
            raise DataError(
                f"no column {col!r} to group by; the users table has: "
                f"{', '.join(available) or 'no users table'}"
            )
        values = []
        for u in ids:
            v = table.get(u, {}).get(col)
            values.append(MISSING if v is None or v == "" else str(v))
        out[col] = values
    return out


def cvar(losses: np.ndarray, tail: float) -> float:
    """Mean of the worst ``tail`` share of ``losses`` (the boundary value weighted by its
    fraction): CVaR at level ``1 - tail``."""
    x = np.sort(np.asarray(losses, dtype=np.float64))[::-1]
    if x.size == 0:
        return math.nan
    k = tail * x.size  # how many users the tail holds (fractional)
    whole = min(int(math.floor(k)), x.size)
    total = x[:whole].sum() + (k - whole) * (x[whole] if whole < x.size else 0.0)
    return float(total / k)


def user_tails(accuracy: np.ndarray, loss: np.ndarray | None, model: str, tail: float) -> Tails:
    """One model's tails over users (NaN accuracies dropped)."""
    ok = ~np.isnan(accuracy)
    acc = accuracy[ok]
    if acc.size == 0:
        nan = math.nan
        return Tails(model, 0, nan, nan, nan, nan, "error rate", tail)
    q = float(np.quantile(acc, tail))
    kind = "error rate"
    losses = 1.0 - acc
    if loss is not None and not np.isnan(loss[ok]).any():
        losses, kind = loss[ok], "log-loss"
    return Tails(
        model=model,
        users=int(acc.size),
        mean=float(acc.mean()),
        p10=q,
        bottom_mean=float(acc[acc <= q + 1e-12].mean()),
        cvar_loss=cvar(losses, tail),
        loss=kind,
        tail=tail,
    )


def group_report(
    per_user: PerUserRows,
    users: pa.Table | Mapping[str, Mapping[str, object]] | None = None,
    group_by: Sequence[str] = (),
    *,
    models: Sequence[str] | None = None,
    tail: float = 0.1,
    min_users: int = 1,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> GroupReport:
    """The group and tail report of ``per_user`` rows (see the module docstring).

    ``per_user``: user id -> {model: accuracy, ...} (NaN: the user was not scored by that
    model), optionally ``{model}_loss`` and ``population``. ``users``: the users table (a
    pyarrow table with ``user_id``, or user id -> attributes); a column of the rows
    themselves (``population``) can be grouped by too. ``models``: which to report (default:
    those of ``pooled``, ``shared``, ``personal`` the rows have).
    """
    if not per_user:
        raise DataError("no per-user rows to report on")
    ids = sorted(per_user)
    first = per_user[ids[0]]
    models = list(models or [m for m in MODELS if m in first])
    if not models:
        raise DataError(f"the per-user rows hold none of the models {', '.join(MODELS)}")
    if not 0.0 < tail < 1.0:
        raise DataError(f"tail must be in (0, 1), got {tail}")

    def column(key: str) -> np.ndarray:
        return np.array([float(per_user[u].get(key, math.nan)) for u in ids], dtype=np.float64)  # type: ignore[arg-type]

    acc = {m: column(m) for m in models}
    losses = {m: column(f"{m}_loss") if f"{m}_loss" in first else None for m in models}
    own = [c for c in group_by if c in first]
    attrs = _attributes(users, ids, [c for c in group_by if c not in own])
    for c in own:
        attrs[c] = [str(per_user[u][c]) for u in ids]
    has_gain = "personal" in acc and "shared" in acc
    diff = acc["personal"] - acc["shared"] if has_gain else np.full(len(ids), math.nan)
    counts = (
        np.array([int(per_user[u].get("comparisons", 0)) for u in ids])  # type: ignore[call-overload]
        if "comparisons" in first
        else None
    )

    def interval(values: np.ndarray) -> MeanInterval:
        return bootstrap_mean(torch.from_numpy(values), n_boot=n_boot, level=level, seed=seed)

    rows: list[GroupRow] = []
    worst: dict[str, dict[str, str]] = {}
    for col in group_by:
        groups = np.array(attrs[col], dtype=object)
        names = sorted(set(groups.tolist()), key=lambda g: (g == MISSING, g))
        col_rows = []
        for g in names:
            sel = groups == g
            accuracy = {m: _nanmean(acc[m][sel]) for m in models}
            n = None if counts is None else int(counts[sel].sum())
            col_rows.append(
                GroupRow(col, g, int(sel.sum()), accuracy, interval(diff[sel]), comparisons=n)
            )
        worst[col] = {}
        for m in models:
            eligible = [
                r for r in col_rows if r.users >= min_users and not math.isnan(r.accuracy[m])
            ]
            if eligible:
                worst[col][m] = min(eligible, key=lambda r: (r.accuracy[m], r.group)).group
        rows.extend(
            replace(r, worst_for=tuple(m for m in models if worst[col].get(m) == r.group))
            for r in col_rows
        )
    tails = {m: user_tails(acc[m], losses[m], m, tail) for m in models}
    return GroupReport(
        group_by=list(group_by),
        models=models,
        users=len(ids),
        rows=rows,
        tails=tails,
        gain=interval(diff),
        worst=worst,
        level=level,
        min_users=min_users,
    )


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


# ---- showing it ----------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "—" if x != x else f"{x:.3f}"


def group_tables(report: GroupReport) -> list:
    """Rich tables: one per column grouped by, then the tails."""
    from rich.table import Table

    level = f"{100 * report.level:g}%"
    tables = []
    for col in report.group_by:
        t = Table(title=f"by {col} ({report.users} users)")
        t.add_column("group")
        t.add_column("users", justify="right")
        t.add_column("comparisons", justify="right")
        for m in report.models:
            t.add_column(m, justify="right")
        t.add_column(f"gain personal - shared [{level}]", justify="right")
        for r in report.rows_of(col):
            gain = f"{r.gain.mean:+.3f} [{r.gain.lower:+.3f}, {r.gain.upper:+.3f}]"
            cells = [
                _pct(r.accuracy[m]) + (" *" if m in r.worst_for else "") for m in report.models
            ]
            n = "—" if r.comparisons is None else str(r.comparisons)
            t.add_row(r.group, str(r.users), n, *cells, gain)
        t.caption = "* the worst group under that model"
        tables.append(t)
    tt = Table(title=f"per-user tails ({report.users} users)")
    for name in ("model", "mean", "10th percentile", "bottom-decile mean", "CVaR 10% of loss"):
        tt.add_column(name, justify="right" if name != "model" else "left")
    for m, tail in report.tails.items():
        tt.add_row(
            m,
            _pct(tail.mean),
            _pct(tail.p10),
            _pct(tail.bottom_mean),
            f"{tail.cvar_loss:.3f} ({tail.loss})",
        )
    tables.append(tt)
    return tables


def group_csv_rows(report: GroupReport) -> list[dict]:
    """One flat row per (column, group), for groups.csv."""
    return [r.to_dict() for r in report.rows]


def plot_groups(report: GroupReport, per_user: PerUserRows, path: str | Path) -> None:
    """Per column: each group's accuracy under each model (the worst group starred) and its
    gain with the interval; last: every user's accuracy, sorted, per model, the 10th
    percentile marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lore_rm.io import atomic_write

    n = len(report.group_by)
    fig, axes = plt.subplots(n + 1, 2, figsize=(11, 3.2 * (n + 1)), squeeze=False)
    width = 0.8 / max(len(report.models), 1)
    for i, col in enumerate(report.group_by):
        rows = report.rows_of(col)
        x = np.arange(len(rows))
        ax = axes[i][0]
        for j, m in enumerate(report.models):
            ax.bar(
                x + (j - (len(report.models) - 1) / 2) * width,
                [r.accuracy[m] for r in rows],
                width,
                label=m,
            )
        worst = report.worst.get(col, {}).get(report.models[-1])
        labels = [("* " if r.group == worst else "") + f"{r.group} ({r.users})" for r in rows]
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean per-user accuracy")
        ax.set_title(f"by {col} (* worst under {report.models[-1]})")
        ax.set_ylim(0, 1.15)
        ax.legend(fontsize=7, ncol=len(report.models), loc="upper right")
        ax = axes[i][1]
        gains = np.array([r.gain.mean for r in rows])
        err = np.array(
            [[r.gain.mean - r.gain.lower for r in rows], [r.gain.upper - r.gain.mean for r in rows]]
        )
        ax.errorbar(x, gains, yerr=err, fmt="o", capsize=3)
        ax.axhline(0, color="grey", lw=1, ls=":")
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_xticks(x, [r.group for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"gain personal - shared ({100 * report.level:g}% interval)")
    ax = axes[n][0]
    for m in report.models:
        values = np.sort([float(v[m]) for v in per_user.values() if float(v[m]) == float(v[m])])  # type: ignore[arg-type]
        ax.plot(np.arange(1, values.size + 1) / max(values.size, 1), values, label=m)
        ax.axhline(report.tails[m].p10, lw=0.8, ls="--", color=ax.lines[-1].get_color())
    ax.set_xlabel("share of users (sorted by accuracy)")
    ax.set_ylabel("per-user accuracy")
    ax.set_title("every user, sorted (dashed: 10th percentile)")
    ax.legend(fontsize=7)
    axes[n][1].axis("off")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
