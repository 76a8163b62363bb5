"""``lore prepare community-alignment``: Meta's Community Alignment (CC-BY-4.0).

One row per conversation: ``conversation_id``, ``annotator_id`` (the user), ``assigned_lang``;
up to four turns (``first`` ... ``fourth``), each with ``{t}_turn_prompt``,
``{t}_turn_response_{a,b,c,d}`` and ``{t}_turn_preferred_response`` (``response_a`` ...
``response_d``; ``a`` ... ``d`` are read too); the annotator's demographics
(``annotator_age``, ``_gender``, ``_education_level``, ``_political``, ``_ethnicity``,
``_country``); ``in_balanced_subset`` / ``in_balanced_subset_10``. Unused turns are empty. No
column says which model wrote a response. The v1.0 release is two CSV files (the full one and
a filtered one), later releases a parquet ``train`` split: both are read.

Each annotated turn is a best-of-four choice and gives **three comparisons**, the preferred
response against each other one; the prompt of turn t is the conversation so far, earlier
turns continued with their **preferred** response. A turn that cannot be read whole (no
prompt, no preferred response, the preferred response empty, fewer than two responses) ends
its conversation: later turns would continue from a response nobody chose.

Protocol: rows of the chosen languages (``lang``, default ``en``; the assigned language) and,
optionally, of a balanced subset; users with fewer than ``min_pairs`` comparisons are left
out; users are split seen / unseen at random (``unseen_fraction``) and each user's
**(conversation, turn)** units train / test (``test_fraction``; ``split_unit="conversation"``
keeps whole conversations on one side). A turn's three comparisons share the prompt and the
chosen response, so they are never split: splitting by comparison puts one side of a choice
in train and the other in test (a public replication saw LoRe's held-out accuracy go from
0.618 to 0.815 that way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lore_rm.data.assign import factorize, split_users_and_groups, stable_hashes
from lore_rm.data.hub import hub_record, looks_like_hub_name, resolve
from lore_rm.data.layout import USERS_FILE
from lore_rm.data.sources import SourceFile, find_data_files
from lore_rm.data.users import Attributes, attribute_value, users_table
from lore_rm.data.writer import Message, TextTable, categorical, file_digest, message, write_dataset
from lore_rm.errors import DataError
from lore_rm.progress import progress_bar
from lore_rm.protocol import PROTOCOL_ROLES

HUB_NAME = "facebook/community-alignment-dataset"
TURNS = ("first", "second", "third", "fourth")
LETTERS = ("a", "b", "c", "d")
# source column -> users-table column
DEMOGRAPHICS = {
    "assigned_lang": "lang",
    "annotator_age": "age",
    "annotator_gender": "gender",
    "annotator_education_level": "education_level",
    "annotator_political": "political",
    "annotator_ethnicity": "ethnicity",
    "annotator_country": "country",
}
BALANCED_SUBSETS = ("in_balanced_subset", "in_balanced_subset_10")
SPLIT_UNITS = ("turn", "conversation")
REQUIRED = (
    "conversation_id",
    "annotator_id",
    "assigned_lang",
    "first_turn_prompt",
    "first_turn_response_a",
    "first_turn_response_b",
    "first_turn_preferred_response",
)
TURN_COLUMNS = tuple(
    f"{t}_turn_{part}"
    for t in TURNS
    for part in ("prompt", *(f"response_{x}" for x in LETTERS), "preferred_response")
)
_PREFERRED = re.compile(r"^(?:response[ _]?)?([abcd])$", re.IGNORECASE)
_TRUE = {"true", "1", "yes", "t", "y"}


@dataclass(frozen=True)
class CommunityAlignmentConfig:
    """How the conversations are filtered and split.

    lang: comma-separated ``assigned_lang`` codes to keep (``en``: ~31k English
        conversations), or ``all``.
    min_pairs: users with fewer comparisons (after the filters) are left out.
    balanced_subset: keep only rows of this subset (``in_balanced_subset`` or
        ``in_balanced_subset_10``); None keeps every row.
    split_unit: what never straddles train and test: ``turn`` (conversation, turn) or
        ``conversation``.
    unseen_fraction: share of users (at random) held out as unseen users.
    test_fraction: per user, share of their units held out as test (one unit always stays
        on the train / few-shot side).
    revision: Hub revision to download (branch, tag or commit); the commit the files came
        from is pinned in dataset.json either way.
    seed: seeds the user and unit draws.
    """

    lang: str = "en"
    min_pairs: int = 0
    balanced_subset: str | None = None
    split_unit: str = "turn"
    unseen_fraction: float = 0.2
    test_fraction: float = 0.5
    revision: str | None = None
    seed: int = 0

    def check(self) -> None:
        if self.balanced_subset is not None and self.balanced_subset not in BALANCED_SUBSETS:
            raise DataError(
                f"balanced_subset must be one of {', '.join(BALANCED_SUBSETS)} or None, "
                f"got {self.balanced_subset!r}"
            )
        if self.split_unit not in SPLIT_UNITS:
            raise DataError(f"split_unit must be 'turn' or 'conversation', got {self.split_unit!r}")
        if not 0.0 <= self.unseen_fraction <= 1.0:
            raise DataError(f"unseen_fraction must be in [0, 1], got {self.unseen_fraction}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise DataError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.min_pairs < 0:
            raise DataError(f"min_pairs must be >= 0, got {self.min_pairs}")
        if not self.lang.replace(",", "").strip():
            raise DataError("lang is empty: give language codes such as 'en' or 'en,fr', or 'all'")

    def languages(self) -> set[str] | None:
        """The ``assigned_lang`` values kept (lower case), or None for every language."""
        codes = {c.strip().lower() for c in self.lang.split(",") if c.strip()}
        return None if "all" in codes else codes


def _text(value) -> str | None:
    """A cell as text, or None when empty (CSV cells are '' and parquet ones null)."""
    return value if isinstance(value, str) and value.strip() else None


def _truthy(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE


@dataclass
class _Turn:
    number: int  # 1-based
    prompt: list[Message]
    chosen: str
    chosen_letter: str
    rejected: list[tuple[str, str]]  # (letter, text)


def parse_turns(rec: dict, src, row: int, dropped: dict[str, int]) -> list[_Turn]:
    """The usable turns of one conversation row, each prompt the conversation so far."""
    context: list[Message] = []
    turns: list[_Turn] = []
    stopped = False
    for number, name in enumerate(TURNS, 1):
        prompt = _text(rec.get(f"{name}_turn_prompt"))
        responses = {x: _text(rec.get(f"{name}_turn_response_{x}")) for x in LETTERS}
        raw_pref = rec.get(f"{name}_turn_preferred_response")
        has_content = prompt is not None or any(responses.values()) or _text(raw_pref)
        if not has_content:
            stopped = True  # an unused turn: the conversation ended (or has a gap)
            continue
        if stopped:
            dropped["turns_after_gap"] += 1
            continue
        letter = None
        pref = _text(raw_pref)
        if pref is not None:
            match = _PREFERRED.match(pref.strip())
            if match is None:
                raise src.error(
                    row,
                    f"'{name}_turn_preferred_response' is {raw_pref!r} "
                    "(expected response_a, response_b, response_c or response_d)",
                )
            letter = match.group(1).lower()
        present = [(x, t) for x, t in responses.items() if t is not None]
        if prompt is None or letter is None or responses[letter] is None or len(present) < 2:
            dropped["turns_incomplete"] += 1
            stopped = True
            continue
        context.append(message("user", prompt))
        chosen = responses[letter]
        assert chosen is not None
        rejected = []
        for x, text in present:
            if x == letter:
                continue
            if text == chosen:
                dropped["identical_responses"] += 1
            else:
                rejected.append((x, text))
        if rejected:
            turns.append(_Turn(number, list(context), chosen, letter, rejected))
        context.append(message("assistant", chosen))
    return turns


def locate_files(root: Path) -> list[Path]:
    """The release's data files in a folder: the ``train`` split when there is one (later
    releases, parquet); else its CSV file -- of v1.0's two, the full one."""
    train = find_data_files(root, "train")
    if train:
        return train
    files = find_data_files(root)
    if not files:
        raise DataError(f"{root}: no Community Alignment data files (.csv or .parquet) found")
    csvs = [p for p in files if ".csv" in p.name.lower()]
    if len(csvs) > 1:
        full = [p for p in csvs if "full" in p.name.lower()]
        if len(full) != 1:
            names = ", ".join(p.name for p in csvs)
            raise DataError(f"{root}: several CSV files ({names}); pass the one to read")
        return full
    return files


def _source_files(source: str | Path, cfg: CommunityAlignmentConfig):
    """(files, Hub record or None)."""
    if looks_like_hub_name(source):
        root = resolve(
            source,
            "Community Alignment",
            allow_patterns=["*.csv", "*.csv.gz", "*.parquet"],
            revision=cfg.revision,
        )
        return locate_files(root), hub_record(source, root, cfg.revision)
    path = Path(source)
    if path.is_dir():
        return locate_files(path), None
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return [path], None


def _read(files: Sequence[Path], cfg: CommunityAlignmentConfig, progress: bool):
    langs = cfg.languages()
    wanted = (*REQUIRED, *TURN_COLUMNS, *DEMOGRAPHICS, *BALANCED_SUBSETS)
    dropped = {
        "rows_other_language": 0,
        "rows_outside_balanced_subset": 0,
        "turns_incomplete": 0,
        "turns_after_gap": 0,
        "identical_responses": 0,
        "users_below_min_pairs": 0,
    }
    turns: list[tuple[str, str, _Turn]] = []  # (user, conversation, turn)
    attrs: dict[str, Attributes] = {}
    first_row: dict[str, str] = {}
    bar = progress_bar(0, "reading Community Alignment", progress)
    for path in files:
        src = SourceFile(path)
        needed = list(REQUIRED) + ([cfg.balanced_subset] if cfg.balanced_subset else [])
        src.require_columns(needed)
        cols = src.columns()
        columns = None if cols is None else [c for c in wanted if c in cols]
        for row, rec in src.records(columns):
            cid = attribute_value(rec.get("conversation_id"))
            uid = attribute_value(rec.get("annotator_id"))
            if cid is None or uid is None:
                raise src.error(row, "'conversation_id' and 'annotator_id' must not be empty")
            where = f"{src.path.name} {src.row_word} {row}"
            if cid in first_row:
                raise src.error(
                    row, f"conversation_id {cid!r} appears twice (first at {first_row[cid]})"
                )
            first_row[cid] = where
            if cfg.balanced_subset and not _truthy(rec.get(cfg.balanced_subset)):
                dropped["rows_outside_balanced_subset"] += 1
                continue
            lang = (attribute_value(rec.get("assigned_lang")) or "").lower()
            if langs is not None and lang not in langs:
                dropped["rows_other_language"] += 1
                continue
            user_attrs = attrs.setdefault(uid, {})
            for col, name in DEMOGRAPHICS.items():
                if user_attrs.get(name) is None:
                    user_attrs[name] = attribute_value(rec.get(col))
            turns.extend((uid, cid, t) for t in parse_turns(rec, src, row, dropped))
            bar.update(1)
    bar.close()
    return turns, attrs, dropped


def prepare_community_alignment(
    source: str | Path,
    out: str | Path,
    config: CommunityAlignmentConfig | None = None,
    *,
    overwrite: bool = False,
    discard_embeddings: bool = False,
    progress: bool = False,
) -> Path:
    """Prepare Community Alignment from the Hub name, a release folder or one data file."""
    cfg = config or CommunityAlignmentConfig()
    cfg.check()
    files, hub = _source_files(source, cfg)
    turns, attrs, dropped = _read(files, cfg, progress)
    if not turns:
        raise DataError(
            f"no Community Alignment comparisons in {', '.join(map(str, files))} with "
            f"lang {cfg.lang!r}" + (f" in {cfg.balanced_subset}" if cfg.balanced_subset else "")
        )

    texts = TextTable()
    cols: dict[str, list] = {k: [] for k in ("user", "conv", "turn", "c", "r", "cl", "rl")}
    for uid, cid, t in turns:
        pid = f"{cid}:{t.number}"
        c = texts.add(t.prompt, message("assistant", t.chosen), pid)
        for letter, text in t.rejected:
            cols["user"].append(uid)
            cols["conv"].append(cid)
            cols["turn"].append(t.number)
            cols["c"].append(c)
            cols["r"].append(texts.add(t.prompt, message("assistant", text), pid))
            cols["cl"].append(LETTERS.index(t.chosen_letter))
            cols["rl"].append(LETTERS.index(letter))
    user_codes, user_names = factorize(np.array(cols["user"], dtype=object))
    pairs = np.bincount(user_codes, minlength=len(user_names))
    keep = pairs[user_codes] >= cfg.min_pairs
    dropped["users_below_min_pairs"] = int((pairs < cfg.min_pairs).sum())
    if not keep.any():
        raise DataError(
            f"no user has {cfg.min_pairs} comparisons or more (the most is {int(pairs.max())})"
        )
    conv = np.array(cols["conv"], dtype=object)[keep]
    turn = np.array(cols["turn"], dtype=np.int64)[keep]
    user_codes, user_names = factorize(np.array(cols["user"], dtype=object)[keep])
    unit = conv if cfg.split_unit == "conversation" else conv + ":" + turn.astype(str)
    unit_codes, units = factorize(unit)
    roles = split_users_and_groups(
        stable_hashes(user_names),
        user_codes,
        stable_hashes(units)[unit_codes],
        cfg.unseen_fraction,
        cfg.test_fraction,
        cfg.seed,
    )
    prompt_ids = (conv + ":" + turn.astype(str)).tolist()
    table = {
        "user_id": categorical(user_codes, list(user_names)),
        "prompt_id": prompt_ids,
        "chosen": np.array(cols["c"], dtype=np.int64)[keep],
        "rejected": np.array(cols["r"], dtype=np.int64)[keep],
        "split": categorical(roles, PROTOCOL_ROLES),
        "conversation_id": conv.tolist(),
        "turn": turn,
        "chosen_response": categorical(np.array(cols["cl"])[keep], LETTERS),
        "rejected_response": categorical(np.array(cols["rl"])[keep], LETTERS),
    }
    unseen = np.zeros(len(user_names), dtype=bool)
    unseen[user_codes[roles >= PROTOCOL_ROLES.index("unseen-fewshot")]] = True
    users = users_table(list(user_names), unseen, attrs, columns=list(DEMOGRAPHICS.values()))
    return write_dataset(
        out,
        table,
        texts,
        source=HUB_NAME,
        protocol="lore-community-alignment",
        parameters=asdict(cfg),
        seed=cfg.seed,
        inputs=[file_digest(p) for p in files],
        dropped=dropped,
        extra_files={USERS_FILE: users},
        hub=hub,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
    )


__all__: Sequence[str] = ("CommunityAlignmentConfig", "prepare_community_alignment")
