"""``lore prepare ...`` (dataset folders from preference files) and ``lore data info``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lore_rm.cli.common import collected_warnings, config_from, fail, one_line_errors
from lore_rm.errors import LoreError
from lore_rm.wording import counted

prepare_app = typer.Typer(
    help="Turn preference data into a dataset folder (comparisons + unique texts + roles).",
    no_args_is_help=True,
)
data_app = typer.Typer(help="Inspect dataset folders.", no_args_is_help=True)

OUT = typer.Option(..., "--out", "-o", help="Dataset folder to write (written atomically).")
OVERWRITE = typer.Option(
    False,
    "--overwrite",
    help="Replace an existing output folder (its embeddings are kept when the texts are the same).",
)
DISCARD = typer.Option(
    False,
    "--discard-embeddings",
    help="With --overwrite: allow deleting an embedding store of texts that changed.",
)
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
USER_ATTRIBUTES = typer.Option(
    None,
    "--user-attributes",
    help="A file with one row per user (jsonl / json / parquet / csv): its user_id column and "
    "any other fields (nested objects flattened one level), kept as the users table for "
    "lore evaluate --group-by.",
)


def _report(path: Path) -> None:
    from lore_rm.data.dataset import PreferenceDataset
    from lore_rm.data.layout import EMBEDDINGS_DIR

    print_summary(PreferenceDataset(path).summary())
    if (path / EMBEDDINGS_DIR).is_dir():
        Console().print(f"Kept {path / EMBEDDINGS_DIR}/: the texts are the same, no re-embedding.")


def print_summary(s: dict) -> None:
    console = Console()
    console.print(
        f"[bold]{s['path']}[/bold]  source: {s['source']}  protocol: {s['protocol']}",
        highlight=False,
    )
    console.print(
        f"users {s['users']}   comparisons {s['comparisons']}   prompts {s['prompts']}   "
        f"unique texts {s['texts']}",
        highlight=False,
    )
    t = Table("role", "comparisons", "users", "per user: min", "median", "max")
    for role, r in s["roles"].items():
        t.add_row(
            role,
            str(r["comparisons"]),
            str(r["users"]),
            str(r["per_user_min"]),
            f"{r['per_user_median']:g}",
            str(r["per_user_max"]),
        )
    console.print(t)
    if s.get("user_attributes") is not None:
        cols = ", ".join(s["user_attributes"]) or "none"
        console.print(f"users table (users.parquet): {cols}", highlight=False)
    for key, what in (
        ("users_below_min", f"with fewer than {counted(s['min_comparisons'], 'comparison')}"),
        ("users_without_test", "with no test comparison (the evaluation never scores them)"),
    ):
        if s.get(key):
            more = " ..." if s[key] > len(s[f"{key}_first"]) else ""
            first = ", ".join(s[f"{key}_first"])
            console.print(f"{counted(s[key], 'user')} {what}: {first}{more}", highlight=False)


@prepare_app.command("generic")
@one_line_errors
def prepare_generic_cmd(
    files: list[str] = typer.Argument(
        ...,
        help="Files (jsonl / json / parquet / csv / arrow; .gz for the text ones), folders (a "
        "datasets save_to_disk folder, or any folder: the data files below it), or Hugging Face "
        "Hub dataset names (read with datasets.load_dataset: pip install 'lore-rm\\[datasets]').",
    ),
    out: Path = OUT,
    prompt_column: str = typer.Option("prompt", help="Prompt column (string or messages)."),
    chosen_column: str = typer.Option("chosen", help="Chosen response column."),
    rejected_column: str = typer.Option("rejected", help="Rejected response column."),
    user_column: str = typer.Option("user_id", help="User id column."),
    prompt_id_column: str | None = typer.Option(
        None, help="Column identifying prompts (default: identical prompts share an id)."
    ),
    split_column: str | None = typer.Option(
        None, help="Column holding each row's role; disables the random split below."
    ),
    unseen_fraction: float = typer.Option(
        0.2,
        help="Share of users held out as unseen (each user by a stable draw from its id and "
        "the seed: adding users moves no one).",
    ),
    test_fraction: float = typer.Option(
        0.5, help="Per user, share of prompts held out as test (a stable draw per prompt)."
    ),
    max_train: int | None = typer.Option(None, help="Cap on a seen user's train comparisons."),
    max_fewshot: int | None = typer.Option(None, help="Cap on an unseen user's few-shot ones."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
    min_comparisons: int = typer.Option(
        2, min=0, help="Warn about users with fewer comparisons (they are kept)."
    ),
    hf_split: str = typer.Option(
        "train", help="Split to read of a Hub dataset or of a saved DatasetDict folder."
    ),
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Leave out invalid rows instead of stopping at the first: counts per reason and "
        "the first rows are printed, every one is listed in OUT/rejects.jsonl, and the counts "
        "go into dataset.json's 'dropped'.",
    ),
    user_attributes: Path | None = USER_ATTRIBUTES,
    overwrite: bool = OVERWRITE,
    discard_embeddings: bool = DISCARD,
) -> None:
    """Prepare comparisons in the TRL preference layout plus a user column.

    Stops at the first invalid row (naming file, line and field) unless --skip-invalid.
    """
    params = dict(locals())
    from lore_rm.data.generic import GenericConfig, InvalidRow, prepare_generic

    try:
        cfg = config_from(GenericConfig, params)
        with collected_warnings():
            path = prepare_generic(
                files,
                out,
                cfg,
                overwrite=overwrite,
                discard_embeddings=discard_embeddings,
                skip_invalid=skip_invalid,
                hf_split=hf_split,
                user_attributes=user_attributes,
            )
    except InvalidRow as e:
        fail(LoreError(f"{e} (--skip-invalid leaves out every such row and reports them)"))
    _report(path)
    if skip_invalid:
        _report_skipped(path)


def _report_skipped(path: Path, first: int = 5) -> None:
    from lore_rm.data.generic import REJECTS_FILE, skipped_rows

    counts, rows = skipped_rows(path, first)
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    if not counts:
        console.print("No invalid rows.")
        return
    total = sum(counts.values())
    by_reason = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    console.print(
        f"Skipped {counted(total, 'invalid row')}: {', '.join(f'{k} {n}' for k, n in by_reason)}; "
        f"all of them are in {path / REJECTS_FILE}",
        markup=False,
    )
    for r in rows:
        console.print(f"  {r['file']}:{r['line']}  {r['reason']}: {r['message']}", markup=False)
    if total > len(rows):
        console.print(f"  ... and {total - len(rows)} more", markup=False)


@prepare_app.command("tldr")
@one_line_errors
def prepare_tldr_cmd(
    sources: list[str] = typer.Argument(
        ...,
        help="comparisons files or folders (batch*.json, train/validation parquet), "
        "or the Hub name openai/summarize_from_feedback.",
    ),
    out: Path = OUT,
    seen_fraction: float = typer.Option(0.5, help="Share of common workers who are seen."),
    train_cap: int = typer.Option(150, help="Most train comparisons per seen worker."),
    fewshot_cap: int = typer.Option(50, help="Most few-shot comparisons per unseen worker."),
    drop_smallest: int = typer.Option(2, help="Workers with fewest comparisons dropped per split."),
    seed: int = typer.Option(0, help="Seed of the worker shuffle and the capped samples."),
    overwrite: bool = OVERWRITE,
    discard_embeddings: bool = DISCARD,
    progress: bool = PROGRESS,
) -> None:
    """Prepare Reddit TLDR (summarize_from_feedback) with the published worker protocol."""
    params = dict(locals())
    from lore_rm.data.tldr import TLDRConfig, prepare_tldr

    cfg = config_from(TLDRConfig, params)
    path = prepare_tldr(
        sources,
        out,
        cfg,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
        progress=progress,
    )
    _report(path)


@prepare_app.command("prism")
@one_line_errors
def prepare_prism_cmd(
    source: str | None = typer.Argument(
        None,
        help="Folder with survey.jsonl and conversations.jsonl, or the Hub name "
        "HannahRoseKirk/prism-alignment.",
    ),
    out: Path = OUT,
    survey: Path | None = typer.Option(None, help="survey.jsonl (overrides the folder's)."),
    conversations: Path | None = typer.Option(None, help="conversations.jsonl (likewise)."),
    seen_fraction: float = typer.Option(0.8, help="Share of shuffled users who are seen."),
    min_dialogs: int = typer.Option(5, help="Users need more than this many dialogs."),
    train_fraction: float = typer.Option(0.5, help="Share of a user's dialogs on the train side."),
    seed: int = typer.Option(123, help="numpy seed of the user and dialog shuffles."),
    overwrite: bool = OVERWRITE,
    discard_embeddings: bool = DISCARD,
    progress: bool = PROGRESS,
) -> None:
    """Prepare PRISM: one comparison per (chosen, rejected) pair, the dialog so far as prompt."""
    params = dict(locals())
    from lore_rm.data.prism import PRISMConfig, prepare_prism

    cfg = config_from(PRISMConfig, params)
    path = prepare_prism(
        source,
        out,
        cfg,
        survey=survey,
        conversations=conversations,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
        progress=progress,
    )
    _report(path)


@prepare_app.command("personalllm")
@one_line_errors
def prepare_personalllm_cmd(
    source: str | None = typer.Argument(
        None,
        help="Folder holding data/train-*.parquet and data/test-*.parquet, or the Hub "
        "name namkoong-lab/PersonalLLM.",
    ),
    out: Path = OUT,
    train: list[Path] = typer.Option([], help="Train file(s) (overrides the folder's)."),
    test: list[Path] = typer.Option([], help="Test file(s) (overrides the folder's)."),
    seen_users: int = typer.Option(1000, help="Simulated seen users."),
    unseen_users: int = typer.Option(500, help="Simulated unseen users."),
    alpha: float = typer.Option(0.1, help="Dirichlet concentration of user weights."),
    seen_rate: float = typer.Option(0.005, help="Share of train prompts per seen user."),
    unseen_rate: float = typer.Option(0.001, help="Share of train prompts per unseen user."),
    test_rate: float = typer.Option(1.0, help="Share of test prompts every user is tested on."),
    reward_models: str | None = typer.Option(
        None, help="Comma-separated score column names (default: the published ten)."
    ),
    seed: int = typer.Option(0, help="Seed of the population and the sampled prompts."),
    overwrite: bool = OVERWRITE,
    discard_embeddings: bool = DISCARD,
    progress: bool = PROGRESS,
) -> None:
    """Prepare PersonalLLM with a simulated Dirichlet population (best vs worst response)."""
    params = {k: v for k, v in locals().items() if k != "reward_models"}
    from lore_rm.data.personalllm import PersonalLLMConfig, prepare_personalllm

    kw = {}
    if reward_models:
        kw["reward_models"] = tuple(n.strip() for n in reward_models.split(",") if n.strip())
    cfg = config_from(PersonalLLMConfig, params, **kw)
    path = prepare_personalllm(
        source,
        out,
        cfg,
        train=train,
        test=test,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
        progress=progress,
    )
    _report(path)


@prepare_app.command("community-alignment")
@one_line_errors
def prepare_community_alignment_cmd(
    source: str = typer.Argument(
        ...,
        help="The Hub name facebook/community-alignment-dataset, a release folder (the parquet "
        "train split, or v1.0's CSV files: the full one is read) or one .csv / .parquet file.",
    ),
    out: Path = OUT,
    lang: str = typer.Option(
        "en", help="assigned_lang codes to keep, comma-separated (e.g. 'en,fr'), or 'all'."
    ),
    min_pairs: int = typer.Option(
        0,
        help="Leave out users with fewer comparisons (after the filters); 100 keeps ~940 "
        "English annotators.",
    ),
    balanced_subset: bool = typer.Option(
        False, "--balanced-subset", help="Keep only rows in the balanced subset."
    ),
    balanced_subset_10: bool = typer.Option(
        False, "--balanced-subset-10", help="Keep only rows in the balanced subset of 10."
    ),
    split_unit: str = typer.Option(
        "turn",
        help="What never straddles train and test: 'turn' (a conversation turn: its three "
        "comparisons) or 'conversation'.",
    ),
    unseen_fraction: float = typer.Option(0.2, help="Share of users held out as unseen."),
    test_fraction: float = typer.Option(0.5, help="Per user, share of units held out as test."),
    revision: str | None = typer.Option(
        None, help="Hub revision (branch, tag or commit); the commit read is pinned either way."
    ),
    seed: int = typer.Option(0, help="Seed of the user and unit draws."),
    overwrite: bool = OVERWRITE,
    discard_embeddings: bool = DISCARD,
    progress: bool = PROGRESS,
) -> None:
    """Prepare Community Alignment: 3 comparisons per annotated turn (the preferred response
    against each other one), the conversation so far continued with the preferred responses,
    split by (conversation, turn); annotator demographics go to the users table."""
    params = {k: v for k, v in locals().items() if not k.startswith("balanced")}
    from lore_rm.data.community_alignment import (
        CommunityAlignmentConfig,
        prepare_community_alignment,
    )

    if balanced_subset and balanced_subset_10:
        raise LoreError("give --balanced-subset or --balanced-subset-10, not both")
    subset = (
        "in_balanced_subset"
        if balanced_subset
        else "in_balanced_subset_10"
        if balanced_subset_10
        else None
    )
    cfg = config_from(CommunityAlignmentConfig, params, balanced_subset=subset)
    path = prepare_community_alignment(
        source,
        out,
        cfg,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
        progress=progress,
    )
    _report(path)


@prepare_app.command("personalrewardbench")
@one_line_errors
def prepare_personalrewardbench_cmd(
    source: str = typer.Argument(
        ...,
        help="MichaelR207/prism_personalized_0125, MichaelR207/chatbot_arena_personalized_0125, "
        "a folder of their files or one file.",
    ),
    out: Path = OUT,
    unseen_fraction: float = typer.Option(
        0.0, help="Share of users held out as unseen (their train + val become few-shot)."
    ),
    user_attributes: Path | None = USER_ATTRIBUTES,
    revision: str | None = typer.Option(
        None, help="Hub revision (branch, tag or commit); the commit read is pinned either way."
    ),
    seed: int = typer.Option(0, help="Seed of the draw of unseen users."),
    overwrite: bool = OVERWRITE,
    discard_embeddings: bool = DISCARD,
    progress: bool = PROGRESS,
) -> None:
    """Prepare PersonalRewardBench keeping its per-user split: train + val fit the user, test
    scores (lore personalrewardbench MODEL DATASET scores it as the benchmark does)."""
    params = dict(locals())
    from lore_rm.data.personalrewardbench import (
        PersonalRewardBenchConfig,
        prepare_personalrewardbench,
    )

    cfg = config_from(PersonalRewardBenchConfig, params)
    path = prepare_personalrewardbench(
        source,
        out,
        cfg,
        user_attributes=user_attributes,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
        progress=progress,
    )
    _report(path)


@data_app.command("info")
@one_line_errors
def info_cmd(
    path: Path = typer.Argument(..., help="A dataset folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Users, comparisons per role, comparisons per user (min / median / max), unique texts,
    and the users table's attribute columns."""
    from lore_rm.data.dataset import PreferenceDataset

    summary = PreferenceDataset(path).summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
