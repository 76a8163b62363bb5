"""``lore prepare generic``: the TRL preference layout plus a user column.

Each row is one comparison: ``prompt`` (a string or a list of ``{role, content}`` messages),
``chosen`` and ``rejected`` (a string, or messages ending with the assistant's response) and
``user_id``. Without a prompt column, ``chosen`` / ``rejected`` may be whole conversations
sharing their prefix (TRL's implicit-prompt form). CSV cells holding messages are JSON text.

The rows come from files, ``datasets`` ``save_to_disk`` folders, Hub names (with the optional
``datasets``), a ``datasets.Dataset`` or a list of row dicts (:func:`generic_sources`). The
first invalid row is an error naming file, line and field; with ``skip_invalid`` every invalid
row is left out and recorded instead (``rejects.jsonl``, the counts in ``dropped``).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from lore_rm.conversation import message_problem
from lore_rm.data.assign import (
    CAP_SALT,
    ROLE_CODES,
    cap_by_key,
    combine,
    factorize,
    split_users_and_groups,
    stable_hashes,
)
from lore_rm.data.hub import load_split, looks_like_hub_name
from lore_rm.data.layout import DATASET_FILE, USERS_FILE
from lore_rm.data.sources import (
    RecordsSource,
    SourceFile,
    dataset_source,
    detect_format,
    name_list,
    saved_dataset_files,
)
from lore_rm.data.users import read_user_attributes, users_table
from lore_rm.data.writer import (
    Message,
    TextTable,
    categorical,
    file_digest,
    message,
    write_dataset,
)
from lore_rm.errors import DataError
from lore_rm.protocol import PROTOCOL_ROLES
from lore_rm.wording import counted

REJECTS_FILE = "rejects.jsonl"  # with skip_invalid: the rows left out, one JSON object each
INVALID = "invalid_"  # prefix of the counts of rows left out by reason in dataset.json

#: where rows come from: a file, or records (a list of dicts, a datasets.Dataset)
Source = SourceFile | RecordsSource


@dataclass(frozen=True)
class GenericConfig:
    """How to read the files and how to split them.

    prompt_column / chosen_column / rejected_column / user_column: column names.
    prompt_id_column: a column identifying prompts (default: identical prompts share an id).
    split_column: a column already holding each row's role (seen-train, seen-test,
        unseen-fewshot, unseen-test); when given, the options below are not used.
    unseen_fraction: chance of each user to be held out as an unseen user (a stable draw
        from the user id and the seed: about this share of the users).
    test_fraction: per user, share of their prompts whose comparisons are held out as test
        (those with the lowest stable draws from the user id, the prompt and the seed; at
        least one prompt always stays on the train / few-shot side).
    max_train / max_fewshot: cap on a seen user's train / an unseen user's few-shot
        comparisons (the ones with the lowest stable draws are kept; None = no cap).
    seed: seeds every draw. A user's role depends only on its own id, prompts and
        comparisons and on the seed: adding users (or rows of other users) moves no one.
    min_comparisons: users with fewer comparisons are kept but reported (a warning).
    """

    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    user_column: str = "user_id"
    prompt_id_column: str | None = None
    split_column: str | None = None
    unseen_fraction: float = 0.2
    test_fraction: float = 0.5
    max_train: int | None = None
    max_fewshot: int | None = None
    seed: int = 0
    min_comparisons: int = 2

    def check(self) -> None:
        if not 0.0 <= self.unseen_fraction <= 1.0:
            raise DataError(f"unseen_fraction must be in [0, 1], got {self.unseen_fraction}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise DataError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.min_comparisons < 0:
            raise DataError(f"min_comparisons must be at least 0, got {self.min_comparisons}")
        for name in ("max_train", "max_fewshot"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise DataError(f"{name} must be at least 1, got {v}")


# the config fields naming columns, and the option of `lore prepare generic` setting each
_COLUMN_OPTIONS = {
    "prompt_column": "--prompt-column",
    "chosen_column": "--chosen-column",
    "rejected_column": "--rejected-column",
    "user_column": "--user-column",
    "prompt_id_column": "--prompt-id-column",
    "split_column": "--split-column",
}


def _named_columns(cfg: GenericConfig) -> dict[str, str]:
    """Config field -> column name, for every column a row must have (not the prompt)."""
    fields = [f for f in _COLUMN_OPTIONS if f != "prompt_column"]
    return {f: getattr(cfg, f) for f in fields if getattr(cfg, f)}


def _no_column(src: Source, cfg: GenericConfig, field: str, present, note: str = "") -> DataError:
    return DataError(
        f"{src.path}: no column {getattr(cfg, field)!r} ({_COLUMN_OPTIONS[field]}{note}); "
        f"the columns are: {name_list(list(present)) or 'none'}"
    )


class InvalidRow(DataError):
    """A row that cannot be a comparison: where it is, why (``reason``, a short key: the
    counts of ``skip_invalid`` are by reason; ``detail``, the message) and the field at fault
    (None when not one field)."""

    def __init__(
        self, src: Source, row: int, reason: str, detail: str, field: str | None = None
    ) -> None:
        super().__init__(f"{src.where(row)}: {detail}")
        self.row, self.reason, self.detail, self.field = row, reason, detail, field


class _Columns:
    """The kind of value each column holds, to report mixed types by row. A row's kinds count
    once the whole row is valid (``commit``), so a skipped row decides nothing."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.kinds: dict[str, tuple[str, int]] = {}
        self.pending: dict[str, tuple[str, int]] = {}

    def check(self, column: str, kind: str, row: int) -> None:
        first = self.kinds.get(column)
        if first is None:
            self.pending[column] = (kind, row)
        elif first[0] != kind:
            raise InvalidRow(
                self.src,
                row,
                "mixed_types",
                f"mixed types in column {column!r}: {kind} here but {first[0]} at "
                f"{self.src.row_word} {first[1]}",
                column,
            )

    def commit(self) -> None:
        self.kinds.update(self.pending)
        self.pending.clear()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _messages(value, src: Source, row: int, field: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise InvalidRow(
            src,
            row,
            "malformed_messages",
            f"malformed messages in {field!r}: expected a non-empty list",
            field,
        )
    out = []
    for i, m in enumerate(value):
        problem = message_problem(m)
        if problem is not None:
            detail = f"malformed messages in {field!r}: item {i} {problem}"
            raise InvalidRow(src, row, "malformed_messages", detail, field)
        role, content = m["role"], m["content"]
        if not content.strip():
            detail = f"empty text in {field!r} (message {i})"
            raise InvalidRow(src, row, "empty_text", detail, field)
        out.append(message(role, content))
    return out


def _missing_value(src: Source, row: int, field: str) -> InvalidRow:
    return InvalidRow(src, row, "missing_value", f"missing value in {field!r}", field)


def _text_or_messages(value, src, row, field, cols: _Columns, default_role: str) -> list[Message]:
    if _missing(value):
        raise _missing_value(src, row, field)
    if src.format == "csv" and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            value = parsed
    if isinstance(value, str):
        cols.check(field, "a string", row)
        if not value.strip():
            raise InvalidRow(src, row, "empty_text", f"empty text in {field!r}", field)
        return [message(default_role, value)]
    if isinstance(value, list):
        cols.check(field, "a list of messages", row)
        return _messages(value, src, row, field)
    detail = f"{field!r} must be a string or a list of messages, got {type(value).__name__}"
    raise InvalidRow(src, row, "wrong_type", detail, field)


def _user_id(value, src, row, field, cols: _Columns) -> str:
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        raise _missing_value(src, row, field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        detail = f"{field!r} must be a string or an integer, got {value!r}"
        raise InvalidRow(src, row, "wrong_type", detail, field)
    cols.check(field, "a string" if isinstance(value, str) else "an integer", row)
    return str(value)


def _comparison(
    rec: dict, src: Source, row: int, cfg: GenericConfig, cols: _Columns, implicit: bool
) -> tuple[list[Message], Message, Message]:
    prompt = (
        []
        if implicit
        else _text_or_messages(rec[cfg.prompt_column], src, row, cfg.prompt_column, cols, "user")
    )
    sides = []
    for field in (cfg.chosen_column, cfg.rejected_column):
        conv = prompt + _text_or_messages(rec[field], src, row, field, cols, "assistant")
        if conv[-1]["role"] != "assistant":
            detail = (
                f"malformed messages in {field!r}: the last message must be the assistant's "
                f"response, got role {conv[-1]['role']!r}"
            )
            raise InvalidRow(src, row, "malformed_messages", detail, field)
        if len(conv) < 2:
            detail = f"{field!r} has a response but no prompt before it"
            raise InvalidRow(src, row, "malformed_messages", detail, field)
        sides.append(conv)
    chosen, rejected = sides
    if chosen[:-1] != rejected[:-1]:
        detail = (
            "chosen and rejected continue the prompt differently (only the last message, "
            "the response, may differ)"
        )
        raise InvalidRow(src, row, "prompt_mismatch", detail)
    if chosen[-1] == rejected[-1]:
        raise InvalidRow(src, row, "identical", "chosen is identical to rejected")
    return chosen[:-1], chosen[-1], rejected[-1]


def _parse_row(rec: dict, src: Source, row: int, cfg: GenericConfig, cols, implicit: bool):
    """One valid row: (prompt, chosen, rejected, prompt id or None, role code or None, user)."""
    prompt, c, r = _comparison(rec, src, row, cfg, cols, implicit)
    pid = role = None
    if cfg.prompt_id_column:
        pid = rec[cfg.prompt_id_column]
        if _missing(pid) or str(pid) == "":
            raise _missing_value(src, row, cfg.prompt_id_column)
        pid = str(pid)
    if cfg.split_column:
        value = rec[cfg.split_column]
        if not isinstance(value, str) or value not in ROLE_CODES:
            detail = f"{cfg.split_column!r} is {value!r}, not one of {', '.join(PROTOCOL_ROLES)}"
            raise InvalidRow(src, row, "bad_split", detail, cfg.split_column)
        role = ROLE_CODES[value]
    user = _user_id(rec[cfg.user_column], src, row, cfg.user_column, cols)
    return prompt, c, r, pid, role, user


def _implicit_prompt(rec: dict, src: Source, cfg: GenericConfig, present) -> bool:
    """No prompt column: allowed when chosen holds whole conversations (messages)."""
    if cfg.prompt_column in rec:
        return False
    value = rec.get(cfg.chosen_column)
    if isinstance(value, list) or (isinstance(value, str) and value.lstrip().startswith("[")):
        return True
    raise _no_column(
        src,
        cfg,
        "prompt_column",
        present,
        f"; needed unless {cfg.chosen_column!r} holds whole conversations as lists of messages",
    )


class Rejects:
    """The rows ``skip_invalid`` leaves out: counts by reason and one record per row (file
    name, line or row, field, reason, message and the row as read)."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.counts: Counter[str] = Counter()

    def add(self, src: Source, row: int, reason: str, detail: str, raw, field=None) -> None:
        self.counts[reason] += 1
        self.records.append(
            {
                "file": src.name,
                "line": row,
                "field": field,
                "reason": reason,
                "message": detail,
                "row": raw,
            }
        )

    def jsonl(self) -> bytes:
        """The records as JSON lines (values JSON cannot hold are written as strings)."""
        lines = (json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in self.records)
        return "".join(lines).encode("utf-8")


def _datasets_class(obj) -> str | None:
    """The class name of a ``datasets`` object (without importing ``datasets``), else None."""
    module = type(obj).__module__
    return type(obj).__name__ if module.split(".")[0] == "datasets" else None


def _is_dataset(obj) -> bool:
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, datasets.Dataset)


def _is_hub_name(item: str | Path) -> bool:
    """``owner/name`` that is no local path and has no data file suffix (a missing
    ``data/train.jsonl`` stays a missing file)."""
    try:
        detect_format(Path(item))
    except DataError:
        return looks_like_hub_name(item)
    return False


def generic_sources(inputs, hf_split: str = "train") -> list[SourceFile | RecordsSource]:
    """What :func:`prepare_generic` reads: a ``datasets.Dataset``, a list of row dicts, or a
    list of files, folders (a ``save_to_disk`` folder, or the data files below one), Hub
    dataset names (``datasets.load_dataset(name, split=hf_split)``) and Datasets."""
    if _is_dataset(inputs):
        return [dataset_source(inputs)]
    if isinstance(inputs, str | Path) or _datasets_class(inputs):  # one path, a DatasetDict
        inputs = [inputs]
    items = list(inputs)
    if items and all(isinstance(x, Mapping) and not _datasets_class(x) for x in items):
        return [RecordsSource("<rows>", lambda: iter(items))]
    sources: list[SourceFile | RecordsSource] = []
    for item in items:
        if _is_dataset(item):
            sources.append(dataset_source(item))
        elif _datasets_class(item):
            raise DataError(
                f"a datasets.{_datasets_class(item)} cannot be read: pass a datasets.Dataset "
                "(one split, e.g. dataset_dict['train'])"
            )
        elif not isinstance(item, str | Path):
            raise DataError(
                "expected file or folder paths, Hub names, a datasets.Dataset or a list of row "
                f"dicts, got {type(item).__name__}"
            )
        elif Path(item).is_dir():
            sources += [SourceFile(f) for f in saved_dataset_files(Path(item), hf_split)]
        elif _is_hub_name(item):
            sources.append(dataset_source(load_split(str(item), hf_split), f"{item}[{hf_split}]"))
        else:
            sources.append(SourceFile(item))
    if not sources:
        raise DataError("no input files given")
    return sources


def read_generic(files, cfg: GenericConfig, skip_invalid: bool = False, hf_split: str = "train"):
    """Parse and validate every row; returns (texts, columns dict, sources, rejects).

    ``files``: whatever :func:`generic_sources` takes. The first invalid row is an error
    (:class:`InvalidRow`); with ``skip_invalid`` each one is left out and recorded in
    ``rejects`` (a :class:`Rejects`; None without ``skip_invalid``).
    """
    texts = TextTable()
    users: list[str] = []
    prompt_ids: list[str | None] = []
    chosen: list[int] = []
    rejected: list[int] = []
    roles: list[int | None] = []
    file_idx: list[int] = []
    rows: list[int] = []
    sources = generic_sources(files, hf_split)
    rejects = Rejects() if skip_invalid else None
    named = _named_columns(cfg)
    for k, src in enumerate(sources):
        present = src.columns()  # None: JSON, whose columns are the keys seen in its records
        if present is not None:
            for field, name in named.items():
                if name not in present:
                    raise _no_column(src, cfg, field, present)
        seen: dict[str, None] = {}
        cols = _Columns(src)
        n_before, skipped_before = len(users), len(rejects.records) if rejects else 0
        implicit, missing = None, None
        on_bad = None if rejects is None else partial(rejects.add, src)
        for row, rec in src.records(on_bad=on_bad):
            if present is None:
                seen.update(dict.fromkeys(rec))
                if missing is not None:
                    if missing.field in seen:  # the column exists: the first row lacking it is bad
                        raise missing
                    continue
            if implicit is None:  # the first row decides between the two prompt forms
                implicit = _implicit_prompt(rec, src, cfg, seen if present is None else present)
            lacking = [n for n in named.values() if n not in rec]
            if not implicit and cfg.prompt_column not in rec:
                lacking.append(cfg.prompt_column)
            cols.pending.clear()
            try:
                if lacking:
                    detail = f"missing field {lacking[0]!r}"
                    bad = InvalidRow(src, row, "missing_field", detail, lacking[0])
                    if rejects is None and present is None and lacking[0] not in seen:
                        # no row so far has this column: read on, to tell a misnamed column
                        # (an error about the file) from a bad row
                        missing = bad
                        continue
                    raise bad
                prompt, c, r, pid, role, user = _parse_row(rec, src, row, cfg, cols, implicit)
            except InvalidRow as e:
                if rejects is None:
                    raise
                rejects.add(src, row, e.reason, e.detail, rec, e.field)
                continue
            cols.commit()
            if pid is None:
                pid = texts.prompt_id(prompt)
            if role is not None:
                roles.append(role)
            users.append(user)
            prompt_ids.append(pid)
            chosen.append(texts.add(prompt, c, pid))
            rejected.append(texts.add(prompt, r, pid))
            file_idx.append(k)
            rows.append(row)
        if present is None and seen:
            for field, name in named.items():
                if name not in seen:
                    raise _no_column(src, cfg, field, seen)
        if len(users) == n_before:
            skipped = len(rejects.records) - skipped_before if rejects else 0
            if skipped:
                raise DataError(f"{src.path}: no valid rows ({skipped} invalid rows skipped)")
            raise DataError(f"{src.path}: no rows")
    columns = {
        "user_id": np.array(users, dtype=object),
        "prompt_id": np.array(prompt_ids, dtype=object),
        "chosen": np.array(chosen, dtype=np.int64),
        "rejected": np.array(rejected, dtype=np.int64),
        "role": np.array(roles, dtype=np.int64) if cfg.split_column else None,
        "file": np.array(file_idx, dtype=np.int64),
        "row": np.array(rows, dtype=np.int64),
    }
    return texts, columns, sources, rejects


def cap_keys(user_hash: np.ndarray, user_codes: np.ndarray, texts, col, seed: int) -> np.ndarray:
    """A stable draw per comparison (user id, chosen and rejected texts, seed): the caps keep
    each user's comparisons with the lowest draws."""
    text_hash = texts.text_hashes()
    return combine(
        seed, CAP_SALT, user_hash[user_codes], text_hash[col["chosen"]], text_hash[col["rejected"]]
    )


def warn_small_users(user_codes: np.ndarray, names: np.ndarray, minimum: int) -> None:
    """A warning naming the users with fewer than ``minimum`` comparisons (first few)."""
    per_user = np.bincount(user_codes, minlength=len(names))
    small = np.flatnonzero(per_user < minimum)
    if small.size:
        shown = ", ".join(repr(str(names[i])) for i in small[:5])
        more = f" and {small.size - 5} more" if small.size > 5 else ""
        warnings.warn(
            f"{counted(int(small.size), 'user')} with fewer than "
            f"{counted(minimum, 'comparison')} (kept; such a user has little or nothing to "
            f"train or test on; --min-comparisons sets the threshold): {shown}{more}",
            stacklevel=3,
        )


def prepare_generic(
    files: Sequence[str | Path] | Sequence[Mapping] | object,
    out: str | Path,
    config: GenericConfig | None = None,
    *,
    overwrite: bool = False,
    discard_embeddings: bool = False,
    skip_invalid: bool = False,
    hf_split: str = "train",
    user_attributes: str | Path | None = None,
) -> Path:
    """Read, validate, split and write a dataset folder; returns its path.

    ``files``: paths of files (jsonl, json, parquet, csv, arrow; ``.gz`` for the text ones)
    and folders (a ``datasets`` ``save_to_disk`` folder, split ``hf_split`` of a saved
    DatasetDict, or any folder: the data files below it), Hugging Face Hub dataset names
    (split ``hf_split``, loaded with the optional ``datasets``), ``datasets.Dataset`` objects;
    or one ``datasets.Dataset``, or one list of row dicts.

    The first invalid row is an error naming its file, line and field. With ``skip_invalid``,
    invalid rows are left out instead: ``dataset.json`` counts them by reason in ``dropped``
    (``invalid_<reason>``) and ``rejects.jsonl`` in the folder holds one record per row
    (:func:`skipped_rows` reads both back).

    ``user_attributes``: a file with one row per user (its ``user_id`` column and their
    attributes), kept as the users table (``users.parquet``) for the group reports.
    """
    cfg = config or GenericConfig()
    cfg.check()
    attrs = read_user_attributes(user_attributes) if user_attributes is not None else None
    texts, col, sources, rejects = read_generic(files, cfg, skip_invalid, hf_split)
    user_codes, user_names = factorize(col["user_id"])
    user_hash = stable_hashes(user_names)
    if cfg.split_column:
        roles = col["role"]
    else:
        prompt_ids, prompt_codes = np.unique(col["prompt_id"], return_inverse=True)
        prompt_hash = texts.prompt_hashes(prompt_ids.tolist())[prompt_codes.reshape(-1)]
        roles = split_users_and_groups(
            user_hash, user_codes, prompt_hash, cfg.unseen_fraction, cfg.test_fraction, cfg.seed
        )
    keys = cap_keys(user_hash, user_codes, texts, col, cfg.seed)
    keep = cap_by_key(user_codes, cfg.max_train, keys, roles == ROLE_CODES["seen-train"])
    keep &= cap_by_key(user_codes, cfg.max_fewshot, keys, roles == ROLE_CODES["unseen-fewshot"])
    warn_small_users(user_codes[keep], user_names, cfg.min_comparisons)
    names = [s.name for s in sources]
    table = {
        "user_id": categorical(user_codes[keep], list(user_names)),
        "prompt_id": col["prompt_id"][keep].tolist(),
        "chosen": col["chosen"][keep],
        "rejected": col["rejected"][keep],
        "split": categorical(roles[keep], PROTOCOL_ROLES),
        "source_file": categorical(col["file"][keep], names),
        "source_row": col["row"][keep],
    }
    dropped = {
        "over_max_train": int(((roles == 0) & ~keep).sum()),
        "over_max_fewshot": int(((roles == 2) & ~keep).sum()),
    }
    if rejects is not None:
        dropped.update({f"{INVALID}{k}": n for k, n in rejects.counts.items()})
    extra = {} if rejects is None else {REJECTS_FILE: rejects.jsonl()}
    params = {**asdict(cfg), "skip_invalid": skip_invalid, "hf_split": hf_split}
    inputs = [s.digest() for s in sources]
    if attrs is not None:
        assert user_attributes is not None
        kept = np.unique(user_codes[keep])
        unseen = np.zeros(len(user_names), dtype=bool)
        unseen[user_codes[keep & (roles >= ROLE_CODES["unseen-fewshot"])]] = True
        extra[USERS_FILE] = users_table([str(user_names[k]) for k in kept], unseen[kept], attrs)
        params["user_attributes"] = Path(user_attributes).name
        inputs.append(file_digest(Path(user_attributes)))
    return write_dataset(
        out,
        table,
        texts,
        source="generic",
        protocol="split-column" if cfg.split_column else "random-users-and-prompts",
        parameters=params,
        seed=cfg.seed,
        inputs=inputs,
        dropped=dropped,
        extra_files=extra or None,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
    )


def skipped_rows(path: str | Path, first: int = 5) -> tuple[dict[str, int], list[dict]]:
    """What ``skip_invalid`` left out of the dataset folder ``path``: the counts by reason and
    the first ``first`` records of its rejects file (both empty when nothing was skipped)."""
    path = Path(path)
    info = json.loads((path / DATASET_FILE).read_text("utf-8"))
    counts = {
        k[len(INVALID) :]: n for k, n in info.get("dropped", {}).items() if k.startswith(INVALID)
    }
    records = []
    if counts and (path / REJECTS_FILE).is_file():
        with open(path / REJECTS_FILE, encoding="utf-8") as f:
            for line in itertools.islice(f, first):
                records.append(json.loads(line))
    return counts, records
