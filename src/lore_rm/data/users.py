"""The users table of a dataset folder: one row per user, their attributes as columns.

``DIR/users.parquet`` holds ``user_id`` (string), ``population`` (``seen`` / ``unseen``) and
one column per attribute the source gives about its users (Community Alignment's annotator
demographics, PRISM's survey fields, or ``--user-attributes FILE`` for any data). Attribute
values are stored as strings (null where a user has none): they name groups, and the group
reports (:mod:`lore_rm.evaluate.groups`) compare users by them. Simulated sources add their
own columns (PersonalLLM: each user's true weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from lore_rm.data.layout import USERS_FILE, read_parquet
from lore_rm.data.sources import SourceFile, name_list
from lore_rm.errors import DataError

Attributes = dict[str, str | None]


def attribute_value(value) -> str | None:
    """A source value as a group name: strings stripped, numbers and booleans as text, empty
    strings / None / NaN as missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def flatten_attributes(record: Mapping, exclude: Iterable[str] = ()) -> Attributes:
    """The scalar fields of a record as attributes; a nested object's scalar fields become
    ``parent_field`` (one level); lists and deeper objects are left out."""
    skip = set(exclude)
    out: Attributes = {}
    for key, value in record.items():
        if key in skip or isinstance(value, list):
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                if not isinstance(v, list | dict):
                    out[f"{key}_{sub}"] = attribute_value(v)
        else:
            out[str(key)] = attribute_value(value)
    return out


def read_user_attributes(path: str | Path, user_column: str = "user_id") -> dict[str, Attributes]:
    """``--user-attributes FILE``: one row per user (jsonl / json / parquet / csv / arrow);
    every other scalar field (nested objects flattened one level) is an attribute. A user
    listed twice is an error naming both rows."""
    src = SourceFile(path)
    src.require_columns([user_column])
    users: dict[str, Attributes] = {}
    first_row: dict[str, int] = {}
    for row, rec in src.records():
        uid = attribute_value(rec.get(user_column))
        if uid is None:
            raise src.error(row, f"no {user_column!r} (the user id column of a users file)")
        if uid in users:
            raise src.error(row, f"user {uid!r} is listed twice (first at row {first_row[uid]})")
        users[uid] = flatten_attributes(rec, exclude=(user_column,))
        first_row[uid] = row
    if not users:
        raise DataError(f"{src.path}: no users in this file")
    return users


def users_table(
    user_ids: Sequence[str],
    unseen: np.ndarray | Sequence[bool],
    attributes: Mapping[str, Mapping[str, str | None]] | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The users table: ``user_id`` (sorted), ``population``, then the attribute columns
    (``columns``, default: every attribute name in first-seen order; a user without one
    gets null)."""
    attributes = attributes or {}
    if columns is None:
        seen_names: dict[str, None] = {}
        for attrs in attributes.values():
            seen_names.update(dict.fromkeys(attrs))
        columns = [c for c in seen_names if c not in ("user_id", "population")]
    order = np.argsort(np.asarray(user_ids, dtype=object).astype(str), kind="stable")
    ids = [str(user_ids[i]) for i in order]
    flags = np.asarray(unseen, dtype=bool)[order]
    data: dict[str, pa.Array] = {
        "user_id": pa.array(ids, pa.string()),
        "population": pa.array(np.where(flags, "unseen", "seen").tolist(), pa.string()),
    }
    for col in columns:
        data[col] = pa.array([attributes.get(u, {}).get(col) for u in ids], pa.string())
    return pa.table(data)


def population_of(user_ids: Sequence[str], split: Sequence[str]) -> dict[str, bool]:
    """user -> unseen?, from each comparison's role (``unseen-*`` roles are unseen users)."""
    return {u: s.startswith("unseen") for u, s in zip(user_ids, split, strict=True)}


def read_users(dataset_dir: str | Path) -> pa.Table | None:
    """The users table of a dataset folder, or None when it has none."""
    path = Path(dataset_dir) / USERS_FILE
    if not path.is_file():
        return None
    table = read_parquet(path)
    if "user_id" not in table.column_names:
        raise DataError(f"{path}: no 'user_id' column (columns: {name_list(table.column_names)})")
    return table


def attribute_columns(table: pa.Table) -> list[str]:
    """The columns of a users table a report can group by: scalar columns but the user id."""
    return [f.name for f in table.schema if f.name != "user_id" and not pa.types.is_nested(f.type)]
