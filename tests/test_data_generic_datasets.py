"""``lore prepare generic`` from Hugging Face ``datasets``: a ``save_to_disk`` folder (through
the CLI), a ``datasets.Dataset`` and a list of row dicts (from Python), a Hub name (the call to
``datasets.load_dataset`` only: no network here), and the error without ``datasets``."""

from __future__ import annotations

import json
import sys

import pyarrow.parquet as pq
import pytest
from data_helpers import assert_fails_cleanly, rows_with_texts, write_jsonl
from typer.testing import CliRunner

from lore_rm.cli import app
from lore_rm.data import GenericConfig, prepare_generic

datasets = pytest.importorskip("datasets")

CFG = ["--unseen-fraction", "0.25", "--test-fraction", "0.5", "--seed", "3"]


def _rows():
    rows = []
    for u in range(4):
        for p in range(3):
            rows.append(
                {
                    "prompt": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": f"question {p}"},
                    ],
                    "chosen": f"good answer {p} for {u % 2}",
                    "rejected": f"bad answer {p}",
                    "user_id": f"user{u}",
                }
            )
    return rows


def _prepare(args):
    res = CliRunner().invoke(app, ["prepare", "generic", *args, *CFG])
    assert res.exit_code == 0, res.output
    return res


def _same_dataset(a, b, *, rows_too=True):
    """Same texts and comparisons (the source file's name aside)."""
    assert (a / "texts.parquet").read_bytes() == (b / "texts.parquet").read_bytes()
    drop = ["source_file"] if rows_too else ["source_file", "source_row"]
    ta = pq.read_table(a / "comparisons.parquet").drop_columns(drop)
    tb = pq.read_table(b / "comparisons.parquet").drop_columns(drop)
    assert ta.equals(tb)
    assert ta.num_rows == 12


def test_saved_folder_dataset_and_rows_match_jsonl(tmp_path):
    rows = _rows()
    _prepare([str(write_jsonl(tmp_path / "in.jsonl", rows)), "--out", str(tmp_path / "jsonl")])
    reference = tmp_path / "jsonl"
    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(tmp_path / "saved"))
    _prepare([str(tmp_path / "saved"), "--out", str(tmp_path / "folder")])
    _same_dataset(reference, tmp_path / "folder")
    got = rows_with_texts(tmp_path / "folder")
    assert got[0]["source_file"] == "data-00000-of-00001.arrow"
    assert got[0]["chosen_conv"][0] == {"role": "system", "content": "Be brief."}

    cfg = GenericConfig(unseen_fraction=0.25, test_fraction=0.5, seed=3)
    _same_dataset(reference, prepare_generic(dataset, tmp_path / "object", cfg))
    _same_dataset(reference, prepare_generic(rows, tmp_path / "dicts", cfg))
    assert rows_with_texts(tmp_path / "dicts")[0]["source_file"] == "<rows>"
    info = json.loads((tmp_path / "object" / "dataset.json").read_text())
    assert info["inputs"][0]["name"] == "<datasets.Dataset>" and info["inputs"][0]["rows"] == 12
    # a Dataset with an indices mapping (shuffled, selected) is read in its own order
    shuffled = dataset.shuffle(seed=1)
    back = rows_with_texts(prepare_generic(shuffled, tmp_path / "shuffled", cfg))
    assert [r["chosen_conv"][-1]["content"] for r in back] == shuffled["chosen"]


def test_saved_dataset_dict_folder(tmp_path):
    rows = _rows()
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows),
            "test": datasets.Dataset.from_list(rows[:2]),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"), num_shards={"train": 2, "test": 1})
    _prepare([str(write_jsonl(tmp_path / "in.jsonl", rows)), "--out", str(tmp_path / "jsonl")])
    _prepare([str(tmp_path / "dd"), "--out", str(tmp_path / "train")])  # train by default
    _same_dataset(tmp_path / "jsonl", tmp_path / "train", rows_too=False)
    files = {r["source_file"] for r in rows_with_texts(tmp_path / "train")}
    assert files == {"data-00000-of-00002.arrow", "data-00001-of-00002.arrow"}
    _prepare([str(tmp_path / "dd"), "--hf-split", "test", "--out", str(tmp_path / "test")])
    assert len(rows_with_texts(tmp_path / "test")) == 2
    res = CliRunner().invoke(
        app, ["prepare", "generic", str(tmp_path / "dd"), "--hf-split", "dev", "--out", "x"]
    )
    assert res.exit_code == 2
    assert "a saved DatasetDict with split(s) 'train', 'test', not 'dev'" in res.output
    assert_fails_cleanly(
        lambda: prepare_generic(dd, tmp_path / "ds"),
        tmp_path / "ds",
        "a datasets.DatasetDict cannot be read: pass a datasets.Dataset",
    )


def test_dataset_errors_name_the_row(tmp_path):
    rows = _rows()
    rows[4] = {**rows[4], "chosen": " "}
    dataset = datasets.Dataset.from_list(rows)
    assert_fails_cleanly(
        lambda: prepare_generic(dataset, tmp_path / "ds", GenericConfig(split_column="role")),
        tmp_path / "ds",
        "<datasets.Dataset>: no column 'role' (--split-column); the columns are: 'prompt'",
    )
    assert_fails_cleanly(
        lambda: prepare_generic(dataset, tmp_path / "ds"),
        tmp_path / "ds",
        "<datasets.Dataset>: row 5: empty text in 'chosen'",
    )
    assert_fails_cleanly(
        lambda: prepare_generic(rows, tmp_path / "ds"),
        tmp_path / "ds",
        "<rows>: row 5: empty text in 'chosen'",
    )
    out = prepare_generic(rows, tmp_path / "ok", skip_invalid=True)
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in rejects] == [("<rows>", 5, "empty_text")]


def test_hub_name(tmp_path, monkeypatch):
    """A Hub name goes to datasets.load_dataset(name, split=...) (replaced here: no network);
    a missing local file with a data suffix stays a missing file; without datasets the error
    names the extra."""
    calls = []

    def load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list(_rows())

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    _prepare(["someone/prefs", "--hf-split", "validation", "--out", str(tmp_path / "hub")])
    assert calls == [("someone/prefs", "validation")]
    info = json.loads((tmp_path / "hub" / "dataset.json").read_text())
    assert info["inputs"][0]["name"] == "someone/prefs[validation]"
    assert_fails_cleanly(
        lambda: prepare_generic(["data/train.jsonl"], tmp_path / "ds"),
        tmp_path / "ds",
        "data/train.jsonl: no such file",
    )
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails
    res = CliRunner().invoke(app, ["prepare", "generic", "someone/prefs", "--out", "x"])
    assert res.exit_code == 2
    assert "someone/prefs: not a local file or folder" in res.output
    assert "pip install 'lore-rm[datasets]'" in res.output
