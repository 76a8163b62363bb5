"""``--group-by``: the group and tail reports of ``lore evaluate`` and the model card's
training population (``lore fit``)."""

from __future__ import annotations

from pathlib import Path

import typer

from lore_rm.errors import LoreError

GROUP_BY = typer.Option(
    None,
    "--group-by",
    help="Users-table columns to report by, comma-separated (e.g. 'age,country'; "
    "'population' splits seen / unseen users): per group, users, the pooled / shared / "
    "personal accuracy and the personalisation gain with its interval, the worst group; plus "
    "every user's tails (groups.csv, groups.json, users.csv, groups.png).",
)
FIT_GROUP_BY = typer.Option(
    None,
    "--group-by",
    help="Users-table columns the model card summarises the training population by "
    "(default: those with 2 to 12 distinct values among the trained users; 'none': no summary).",
)
AUTO_MAX_GROUPS, AUTO_MAX_COLUMNS = 12, 6


def parse_columns(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def users_for(dataset: Path, columns: list[str]):
    """The dataset's users table, checked to hold ``columns`` (before any fitting)."""
    from lore_rm.data.dataset import PreferenceDataset
    from lore_rm.data.users import attribute_columns

    users = PreferenceDataset(dataset).users
    if users is None:
        raise LoreError(
            f"{dataset}: --group-by needs a users table (users.parquet), and this dataset has "
            "none: prepare it with --user-attributes FILE (generic, personalrewardbench) or "
            "from a source with user attributes (community-alignment, prism)"
        )
    have = attribute_columns(users)
    missing = [c for c in columns if c not in have]
    if missing:
        raise LoreError(
            f"--group-by: no column {', '.join(map(repr, missing))} in {dataset}/users.parquet; "
            f"its columns: {', '.join(have)}"
        )
    return users


def evaluate_groups(split, rank: int, users, columns: list[str], *, seed: int, **fit_kw):
    """(report, per-user rows) of the model at ``rank`` against the pooled and shared ones."""
    from lore_rm.evaluate.groups import group_report
    from lore_rm.evaluate.personal_rows import personalisation_rows

    rows = personalisation_rows(split, rank, seed=seed, **fit_kw)
    return group_report(rows, users, columns, seed=seed), rows


def write_group_files(out: Path, report, rows: dict, users) -> list[str]:
    """groups.json, groups.csv, users.csv (every user's row and attributes), groups.png."""
    from lore_rm.evaluate.groups import group_csv_rows, plot_groups
    from lore_rm.evaluate.report import rows_to_csv, write_json
    from lore_rm.io import atomic_write_text

    attrs = {r["user_id"]: r for r in users.to_pylist()} if users is not None else {}
    per_user = [
        {
            **{k: v for k, v in attrs.get(u, {}).items() if not isinstance(v, list)},
            **row,
            "user_id": u,
        }
        for u, row in sorted(rows.items())
    ]
    write_json(out / "groups.json", report.to_dict())
    atomic_write_text(out / "groups.csv", rows_to_csv(group_csv_rows(report)))
    atomic_write_text(out / "users.csv", rows_to_csv(per_user))
    plot_groups(report, rows, out / "groups.png")
    return ["groups.json", "groups.csv", "users.csv", "groups.png"]


def training_population(model, split, users, text: str | None) -> dict | None:
    """The model card's summary of the seen users by group: users, training comparisons,
    held-out shared / personal accuracy and the gain (None without a users table or columns)."""
    from lore_rm.data.users import attribute_columns
    from lore_rm.evaluate.groups import group_report
    from lore_rm.evaluate.personal_rows import per_user_rows

    if users is None or (text or "").strip().lower() == "none":
        return None
    trained = set(split.seen_train.user_ids)
    import pyarrow as pa
    import pyarrow.compute as pc

    mine = users.filter(pc.is_in(users.column("user_id"), value_set=pa.array(sorted(trained))))
    if text:
        columns = parse_columns(text)
        have = attribute_columns(users)
        missing = [c for c in columns if c not in have]
        if missing:
            raise LoreError(
                f"--group-by: no column {', '.join(map(repr, missing))} in users.parquet"
            )
    else:
        columns = [
            c
            for c in attribute_columns(users)
            if 2 <= len(set(mine.column(c).to_pylist())) <= AUTO_MAX_GROUPS
        ][:AUTO_MAX_COLUMNS]
    if not columns:
        return None
    data = split.seen_test if split.seen_test.n else split.seen_train
    rows = per_user_rows(model, data)
    train = split.seen_train
    counts = dict(zip(train.user_ids, train.counts_per_user().tolist(), strict=True))
    for u, row in rows.items():
        row["comparisons"] = counts.get(u, 0)  # the training comparisons, for the card
    report = group_report(rows, mine, columns, models=["shared", "personal"])
    held_out = "held-out" if split.seen_test.n else "training"
    lines = [
        "\n## Training population\n",
        f"{len(trained)} seen users; accuracy is the mean over each group's users of their "
        f"{held_out} pairwise accuracy, shared = the basis at the population's mean weights, "
        f"personal = each user's own weights; gain = personal - shared with its "
        f"{100 * report.level:g}% bootstrap interval over the group's users.\n",
    ]
    for col in columns:
        lines += [
            f"\n### by {col}\n",
            "| group | users | training comparisons | shared | personal | gain |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.group} | {r.users} | {r.comparisons} | {r.accuracy['shared']:.3f} | "
            f"{r.accuracy['personal']:.3f} | {r.gain.mean:+.3f} "
            f"[{r.gain.lower:+.3f}, {r.gain.upper:+.3f}] |"
            for r in report.rows_of(col)
        ]
    return {"columns": columns, "report": report.to_dict(), "card": "\n".join(lines) + "\n"}
