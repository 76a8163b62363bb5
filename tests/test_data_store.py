"""The dataset folder: unique texts, atomic byte-stable writes, reading back, the split."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import assert_fails_cleanly, folder_bytes

from lore_rm.data import PreferenceDataset, TextTable, write_dataset
from lore_rm.data.assign import cap_per_group, rank_in_groups
from lore_rm.data.layout import read_conversations
from lore_rm.data.writer import message
from lore_rm.errors import DataError

U = [message("user", "What is 2+2?")]


def _small(tmp_path, name="ds", **kw):
    texts = TextTable()
    a = texts.add(U, message("assistant", "4"))
    b = texts.add(U, message("assistant", "5"))
    c = texts.add([message("user", "Hi")], message("assistant", "Hello"))
    d = texts.add([message("user", "Hi")], message("assistant", "Go away"))
    unused = texts.add([message("user", "x")], message("assistant", "never used"))
    assert unused == 4 and texts.add(U, message("assistant", "4")) == a  # deduplicated
    comparisons = {
        "user_id": ["u1", "u1", "u2", "u3", "u3", "u3"],
        "prompt_id": ["p0", "p1", "p0", "p0", "p1", "p1"],
        "chosen": [a, c, a, b, d, c],
        "rejected": [b, d, b, a, c, d],
        "split": [
            "seen-train",
            "seen-test",
            "seen-train",
            "unseen-fewshot",
            "unseen-test",
            "unseen-test",
        ],
    }
    comparisons.update(kw.pop("columns", {}))
    return write_dataset(
        tmp_path / name,
        comparisons,
        texts,
        source="unit",
        protocol="hand",
        parameters={"rate": 0.005, "cap": 150},
        seed=7,
        **kw,
    )


def test_text_table_dedupes_and_numbers_prompts():
    t = TextTable()
    assert t.add(U, message("assistant", "4")) == 0
    assert t.add([message("user", "Hi")], message("assistant", "4")) == 1  # other prompt
    assert t.add(U, message("assistant", "4")) == 0
    assert t.prompt_ids == ["p0", "p1"]
    assert json.loads(t.text(1)) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "4"},
    ]


def test_write_and_read_back(tmp_path):
    path = _small(tmp_path)
    ds = PreferenceDataset(path)
    assert ds.n_texts == 4  # the unused text was dropped and indices renumbered
    convs = read_conversations(path)
    assert [c[-1]["content"] for c in convs] == ["4", "5", "Hello", "Go away"]
    assert ds.counts() == {"seen-train": 2, "seen-test": 1, "unseen-fewshot": 1, "unseen-test": 2}
    info = json.loads((path / "dataset.json").read_text())
    assert info["counts"]["roles"]["unseen-test"] == {"comparisons": 2, "users": 1}
    assert info["counts"]["texts"] == 4 and info["counts"]["users"] == 3
    assert info["seed"] == 7 and info["parameters"] == {"cap": 150, "rate": 0.005}
    s = ds.summary()
    assert s["roles"]["all"] == {
        "comparisons": 6,
        "users": 3,
        "per_user_min": 1,
        "per_user_median": 2.0,
        "per_user_max": 3,
    }
    assert s["roles"]["seen-train"]["users"] == 2


def test_to_split_shares_one_table(tmp_path):
    ds = PreferenceDataset(_small(tmp_path))
    emb = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    split = ds.to_split(emb, reference_head=torch.ones(2))
    assert split.seen_train.table is split.unseen_test.table is split.seen_test.table
    assert split.seen_train.user_ids == ("u1", "u2")
    assert split.unseen_test.user_ids == ("u3",)
    # features = E[chosen] - E[rejected]: u3's unseen-test rows are (d, c) and (c, d)
    x = split.unseen_test.feature_rows(0, 2)
    assert torch.equal(x, torch.tensor([[2.0, 2.0], [-2.0, -2.0]]))
    assert torch.equal(split.reference_head, torch.ones(2))
    with pytest.raises(DataError, match="4 texts"):
        ds.to_split(torch.zeros(5, 2))


def test_byte_identical_and_overwrite(tmp_path):
    a = folder_bytes(_small(tmp_path, "a"))
    b = folder_bytes(_small(tmp_path, "b"))
    assert a == b and set(a) == {"comparisons.parquet", "dataset.json", "texts.parquet"}
    with pytest.raises(DataError, match="already exists"):
        _small(tmp_path, "a")
    _small(tmp_path, "a", overwrite=True, columns={"user_id": ["v"] * 6})
    assert set(pq.read_table(tmp_path / "a" / "comparisons.parquet")["user_id"].to_pylist()) == {
        "v"
    }


@pytest.mark.parametrize(
    "columns, fragment",
    [
        ({"split": ["train"] * 6}, "split 'train' is not one of"),
        ({"rejected": [1, 3, 1, 0, 2, 2]}, "row 5: chosen and rejected are the same"),
        ({"chosen": [0, 1, 2, 9, 3, 2]}, "row 3: chosen index 9 has no text"),
    ],
)
def test_invalid_comparisons_leave_nothing(tmp_path, columns, fragment):
    out = tmp_path / "deep" / "er" / "ds"
    assert_fails_cleanly(lambda: _small(tmp_path, "deep/er/ds", columns=columns), out, fragment)
    assert not (tmp_path / "deep").exists()  # parents created for the write are removed too


def test_failure_during_write_leaves_nothing(tmp_path, monkeypatch):
    import lore_rm.data.writer as store

    calls = []

    def fail_second(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        return pq.write_table(table, where, **kw)

    monkeypatch.setattr(store.pq, "write_table", fail_second)
    with pytest.raises(OSError, match="disk full"):
        _small(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="no such dataset folder"):
        PreferenceDataset(tmp_path / "nope")
    path = _small(tmp_path)
    (path / "dataset.json").write_text(
        json.dumps({"format": "lore-rm-dataset", "format_version": 99})
    )
    with pytest.raises(DataError, match="format version 99"):
        PreferenceDataset(path)


def test_rank_in_groups_is_a_permutation_per_group():
    groups = np.array([3, 1, 3, 3, 1, 0])
    rank = rank_in_groups(groups, np.random.default_rng(0))
    for g in (0, 1, 3):
        assert sorted(rank[groups == g]) == list(range((groups == g).sum()))
    keep = cap_per_group(groups, 2, np.random.default_rng(1), rows=groups != 1)
    assert keep[groups == 1].all() and keep[groups == 3].sum() == 2 and keep[groups == 0].all()
