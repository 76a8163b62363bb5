"""Opening a dataset folder and turning it into what the fit needs."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lore_rm.comparisons import Comparisons
from lore_rm.data.layout import (
    COMPARISONS_FILE,
    DATASET_FILE,
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    TEXTS_FILE,
    parquet_rows,
    read_parquet,
)
from lore_rm.errors import DataError
from lore_rm.io import read_format_record
from lore_rm.protocol import PROTOCOL_ROLES, ProtocolSplit


class PreferenceDataset:
    """A dataset folder (see :mod:`lore_rm.data.layout`): comparisons, texts and their roles.

    Tables are read lazily. :meth:`to_split` builds one :class:`Comparisons` per role, all
    sharing one embedding table (T x d): features ``E[chosen] - E[rejected]`` are formed by
    the fit batch by batch, never as a users x prompts x d array.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = self.path / DATASET_FILE
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such dataset folder")
        for name in (DATASET_FILE, COMPARISONS_FILE, TEXTS_FILE):
            if not (self.path / name).is_file():
                raise DataError(f"{self.path}: not a dataset folder ({name} is missing)")
        self.info: dict = read_format_record(meta, DATASET_FORMAT, (DATASET_FORMAT_VERSION,))

    def __repr__(self) -> str:
        return f"PreferenceDataset({str(self.path)!r}, source={self.source!r})"

    # ---- metadata ---------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.info.get("source", "")

    @property
    def protocol(self) -> str:
        return self.info.get("protocol", "")

    # ---- tables ---------------------------------------------------------------------------
    @cached_property
    def comparisons(self) -> pa.Table:
        return read_parquet(self.path / COMPARISONS_FILE)

    @cached_property
    def texts(self) -> pa.Table:
        return read_parquet(self.path / TEXTS_FILE)

    @cached_property
    def users(self) -> pa.Table | None:
        """The users table (``users.parquet``: one row per user, their attributes), or None
        when the folder has none."""
        from lore_rm.data.users import read_users

        return read_users(self.path)

    @property
    def n_texts(self) -> int:
        return parquet_rows(self.path / TEXTS_FILE)

    def __len__(self) -> int:
        return self.comparisons.num_rows

    def role(self, name: str) -> pa.Table:
        """The comparisons of one role (``seen-train``, ``seen-test``, ...)."""
        if name not in PROTOCOL_ROLES:
            raise DataError(f"unknown role {name!r}; roles are {', '.join(PROTOCOL_ROLES)}")
        return self.comparisons.filter(pc.equal(self.comparisons.column("split"), name))

    def counts(self) -> dict[str, int]:
        """Comparisons per role."""
        return {r: self.role(r).num_rows for r in PROTOCOL_ROLES}

    def summary(self) -> dict:
        """Users, comparisons per role and per user (min / median / max), unique texts, and
        the users table's attribute columns (None without a users table)."""
        table = self.comparisons
        out = {
            "path": str(self.path),
            "source": self.source,
            "protocol": self.protocol,
            "users": len(pc.unique(table.column("user_id"))),
            "prompts": len(pc.unique(table.column("prompt_id"))),
            "texts": self.n_texts,
            "comparisons": table.num_rows,
            "roles": {},
            "user_attributes": None,
        }
        if self.users is not None:
            from lore_rm.data.users import attribute_columns

            out["user_attributes"] = attribute_columns(self.users)
        for role in (*PROTOCOL_ROLES, None):
            sub = table if role is None else self.role(role)
            per_user = _per_user(sub)
            out["roles"]["all" if role is None else role] = {
                "comparisons": sub.num_rows,
                "users": int(per_user.size),
                "per_user_min": int(per_user.min()) if per_user.size else 0,
                "per_user_median": float(np.median(per_user)) if per_user.size else 0.0,
                "per_user_max": int(per_user.max()) if per_user.size else 0,
            }
        out.update(self.thin_users())
        return out

    def thin_users(self, shown: int = 5) -> dict:
        """Users with fewer comparisons than the preparation's ``min_comparisons`` (default
        2), and users with nothing on the test side of their role (never scored by the
        evaluation): counts and the first ``shown`` ids of each."""
        minimum = int(self.info.get("parameters", {}).get("min_comparisons", 2))
        users = self.comparisons.column("user_id")
        counts = pc.value_counts(users)
        ids = counts.field("values")
        small = pc.filter(ids, pc.less(counts.field("counts"), minimum)).sort()
        split = self.comparisons.column("split")
        is_test = pc.or_(pc.equal(split, "seen-test"), pc.equal(split, "unseen-test"))
        tested = pc.unique(pc.filter(users, is_test))
        untested = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=tested))).sort()
        return {
            "min_comparisons": minimum,
            "users_below_min": len(small),
            "users_below_min_first": small[:shown].to_pylist(),
            "users_without_test": len(untested),
            "users_without_test_first": untested[:shown].to_pylist(),
        }

    # ---- what the fit needs -------------------------------------------------------------------
    def to_split(self, embeddings, reference_head=None, *, all_data: bool = False) -> ProtocolSplit:
        """The four roles as :class:`Comparisons` over one shared embedding table.

        ``embeddings`` is (T x d), row i embedding texts row i (T = number of unique texts).
        User ids of each role are sorted; every role shares the same table tensor.
        ``all_data``: every comparison, whatever its role, in ``seen_train`` (every user a
        seen user) and the other roles empty: the model to deploy after evaluating.
        """
        table = torch.as_tensor(embeddings)
        if table.ndim != 2 or table.shape[0] != self.n_texts:
            raise DataError(
                f"{self.path}: embeddings have shape {tuple(table.shape)} but the dataset has "
                f"{self.n_texts} texts (expected {self.n_texts} x d)"
            )
        if not table.is_floating_point():
            table = table.to(torch.float32)
        parts = {}
        for role in PROTOCOL_ROLES:
            if all_data:
                everything = self.comparisons
                sub = everything if role == "seen-train" else everything.slice(0, 0)
            else:
                sub = self.role(role)
            users = sub.column("user_id")
            ids = pc.unique(users).sort() if sub.num_rows else pa.array([], pa.string())
            index = pc.index_in(users, value_set=ids).to_numpy(zero_copy_only=False)
            parts[role] = Comparisons.from_pairs(
                table,
                sub.column("chosen").to_numpy().astype(np.int64),
                sub.column("rejected").to_numpy().astype(np.int64),
                index.astype(np.int64),
                user_ids=ids.to_pylist(),
            )
        info = {
            "dataset": str(self.path),
            "source": self.source,
            "protocol": self.protocol,
            "parameters": self.info.get("parameters", {}),
            "seed": self.info.get("seed"),
            "all_data": all_data,
        }
        return ProtocolSplit(
            seen_train=parts["seen-train"],
            seen_test=parts["seen-test"],
            unseen_fewshot=parts["unseen-fewshot"],
            unseen_test=parts["unseen-test"],
            reference_head=None if reference_head is None else torch.as_tensor(reference_head),
            info=info,
        )


def _per_user(table: pa.Table) -> np.ndarray:
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    counts = pc.value_counts(table.column("user_id")).field("counts")
    return counts.to_numpy(zero_copy_only=False)
