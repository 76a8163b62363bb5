"""``lore prepare personalrewardbench``: SynthesizeMe's PersonalRewardBench.

Two Hub datasets share one layout (``MichaelR207/prism_personalized_0125``,
``MichaelR207/chatbot_arena_personalized_0125``): one row per comparison with ``user_id``, a
per-user ``split`` (``train`` / ``val`` / ``test``), ``context`` (the conversation so far: a
list of ``{role, content}`` messages), ``chosen`` and ``rejected`` (each one ``{role,
content}`` message), ``flip`` (the order the benchmark's judges saw the pair in) and the
judges' columns (``prediction_*``, ``reasoning_*``, ...; not kept). The Hub splits are read
together: the ``split`` column decides.

The benchmark's own split is kept: a user's ``train`` and ``val`` comparisons fit the user,
their ``test`` comparisons score. By default every user is a seen user (``seen-train`` /
``seen-test``); ``unseen_fraction`` holds users out as unseen users, whose train + val
become their few-shot comparisons (``unseen-fewshot``) for a basis learned without them.
Scoring as the benchmark does (both orderings of every test pair, per user and pooled, with
a bootstrap interval) is :mod:`lore_rm.evaluate.personalrewardbench`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lore_rm.data.assign import factorize, roles_from, stable_hashes, stable_unseen
from lore_rm.data.hub import hub_record, looks_like_hub_name, resolve
from lore_rm.data.layout import USERS_FILE
from lore_rm.data.sources import SourceFile, find_data_files
from lore_rm.data.users import attribute_value, read_user_attributes, users_table
from lore_rm.data.writer import Message, TextTable, categorical, file_digest, message, write_dataset
from lore_rm.errors import DataError
from lore_rm.progress import progress_bar
from lore_rm.protocol import PROTOCOL_ROLES

HUB_NAMES = (
    "MichaelR207/prism_personalized_0125",
    "MichaelR207/chatbot_arena_personalized_0125",
)
REQUIRED = ("user_id", "split", "context", "chosen", "rejected")
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
ROLE_NAMES = {"user": "user", "human": "user", "system": "system"}
ROLE_NAMES.update(dict.fromkeys(("assistant", "model", "bot", "gpt"), "assistant"))


@dataclass(frozen=True)
class PersonalRewardBenchConfig:
    """unseen_fraction: share of users (at random) held out as unseen users (0: every user is
    a seen user, as the benchmark scores them).
    revision: Hub revision to download; the commit read is pinned in dataset.json.
    seed: seeds the draw of unseen users (each user by a stable draw from its id and the
        seed: adding users moves no one)."""

    unseen_fraction: float = 0.0
    revision: str | None = None
    seed: int = 0


def _parsed(value, src, row: int, field: str):
    """Messages come as objects (parquet, JSON) or JSON text (CSV)."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise src.error(row, f"{field!r} is not valid JSON ({e.msg})") from None
    return value


def _message(value, src, row: int, where: str) -> Message:
    if not isinstance(value, dict):
        raise src.error(row, f"{where} must be a {{role, content}} message, got {value!r}")
    role, content = value.get("role"), value.get("content")
    if role not in ROLE_NAMES:
        raise src.error(row, f"{where} has role {role!r} (expected user, assistant or model)")
    if not isinstance(content, str):
        raise src.error(row, f"{where} has no string 'content'")
    return message(ROLE_NAMES[role], content)


def _response(value, src, row: int, field: str) -> str:
    value = _parsed(value, src, row, field)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        text = value
    else:
        msg = _message(value, src, row, repr(field))
        if msg["role"] != "assistant":
            raise src.error(row, f"{field!r} is a {msg['role']} message, not the assistant's")
        text = msg["content"]
    if not text.strip():
        raise src.error(row, f"{field!r} is empty")
    return text


def _context(value, src, row: int) -> list[Message]:
    value = _parsed(value, src, row, "context")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise src.error(row, f"'context' must be a non-empty list of messages, got {value!r}")
    return [_message(m, src, row, f"context[{i}]") for i, m in enumerate(value)]


def _flip(value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = attribute_value(value)
    return None if text is None else text.lower() in ("true", "1")


def locate_files(source: str | Path, cfg: PersonalRewardBenchConfig):
    """(data files, Hub record or None): every split of a Hub dataset or folder, or a file."""
    if looks_like_hub_name(source):
        root = resolve(
            source,
            "PersonalRewardBench",
            allow_patterns=["*.parquet", "*.jsonl", "*.json", "*.csv"],
            revision=cfg.revision,
        )
        record = hub_record(source, root, cfg.revision)
    else:
        root, record = Path(source), None
        if root.is_file():
            return [root], None
        if not root.is_dir():
            raise DataError(f"{root}: no such file or folder")
    files = find_data_files(root)
    if not files:
        raise DataError(f"{root}: no PersonalRewardBench data files found")
    return files, record


def prepare_personalrewardbench(
    source: str | Path,
    out: str | Path,
    config: PersonalRewardBenchConfig | None = None,
    *,
    user_attributes: str | Path | None = None,
    overwrite: bool = False,
    discard_embeddings: bool = False,
    progress: bool = False,
) -> Path:
    """Prepare PersonalRewardBench from a Hub name, a folder of its files or one file, keeping
    its per-user train / val / test split; ``user_attributes`` (a file with ``user_id``, e.g.
    PRISM's survey.jsonl for the PRISM half) fills the users table."""
    cfg = config or PersonalRewardBenchConfig()
    if not 0.0 <= cfg.unseen_fraction <= 1.0:
        raise DataError(f"unseen_fraction must be in [0, 1], got {cfg.unseen_fraction}")
    files, hub = locate_files(source, cfg)
    attrs = read_user_attributes(user_attributes) if user_attributes is not None else {}
    texts = TextTable()
    cols: dict[str, list] = {k: [] for k in ("user", "prompt", "c", "r", "split", "flip")}
    dropped = {"identical_responses": 0}
    bar = progress_bar(len(files), "reading PersonalRewardBench", progress)
    for path in files:
        src = SourceFile(path)
        src.require_columns(REQUIRED)
        names = src.columns()
        wanted = None if names is None else [c for c in (*REQUIRED, "flip") if c in names]
        for row, rec in src.records(wanted):
            missing = [c for c in REQUIRED if c not in rec]
            if missing:
                raise src.error(row, f"missing field(s) {', '.join(map(repr, missing))}")
            uid = attribute_value(rec["user_id"])
            if uid is None:
                raise src.error(row, "'user_id' is empty")
            split = SPLITS.get(str(rec["split"]).strip().lower())
            if split is None:
                raise src.error(row, f"'split' is {rec['split']!r} (expected train, val or test)")
            context = _context(rec["context"], src, row)
            chosen = _response(rec["chosen"], src, row, "chosen")
            rejected = _response(rec["rejected"], src, row, "rejected")
            if chosen == rejected:
                dropped["identical_responses"] += 1
                continue
            pid = texts.prompt_id(context)
            cols["user"].append(uid)
            cols["prompt"].append(pid)
            cols["c"].append(texts.add(context, message("assistant", chosen), pid))
            cols["r"].append(texts.add(context, message("assistant", rejected), pid))
            cols["split"].append(split)
            cols["flip"].append(_flip(rec.get("flip")))
        bar.update(1)
    bar.close()
    if not cols["user"]:
        raise DataError(f"no PersonalRewardBench comparisons in {', '.join(map(str, files))}")
    user_codes, user_names = factorize(np.array(cols["user"], dtype=object))
    unseen = stable_unseen(stable_hashes(user_names), cfg.unseen_fraction, cfg.seed)
    source_split = np.array(cols["split"], dtype=object)
    roles = roles_from(unseen[user_codes], source_split == "test")
    split_codes, split_names = factorize(source_split)
    table = {
        "user_id": categorical(user_codes, list(user_names)),
        "prompt_id": cols["prompt"],
        "chosen": np.array(cols["c"], dtype=np.int64),
        "rejected": np.array(cols["r"], dtype=np.int64),
        "split": categorical(roles, PROTOCOL_ROLES),
        "source_split": categorical(split_codes, list(split_names)),
        "flip": pa.array(cols["flip"], pa.bool_()),
    }
    inputs = [file_digest(p) for p in files]
    if user_attributes is not None:
        inputs.append(file_digest(Path(user_attributes)))
    params = {**asdict(cfg), "user_attributes": None}
    if user_attributes is not None:
        params["user_attributes"] = Path(user_attributes).name
    return write_dataset(
        out,
        table,
        texts,
        source=str(source) if hub is not None else "personalrewardbench",
        protocol="personalrewardbench",
        parameters=params,
        seed=cfg.seed,
        inputs=inputs,
        dropped=dropped,
        extra_files={USERS_FILE: users_table(list(user_names), unseen, attrs)},
        hub=hub,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
    )


__all__: Sequence[str] = ("PersonalRewardBenchConfig", "prepare_personalrewardbench")
