"""RewardBench 2 scoring against hand-computed figures, and ``lore rewardbench``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lore_rm import LowRankReward
from lore_rm.errors import DataError
from lore_rm.evaluate.rewardbench import evaluate_rewardbench, read_rewardbench


class TableEmbedder:
    """Embeds a response "x y" as the vector (x, y): scores are readable by hand."""

    name = "table-2"
    dim = 2

    def embed(self, conversations):
        return torch.tensor([[float(v) for v in c[-1]["content"].split()] for c in conversations])

    def reference_head(self):
        return torch.tensor([1.0, -1.0])


def _row(rid, subset, chosen, rejected, prompt="q"):
    return {
        "id": rid,
        "subset": subset,
        "prompt": f"{prompt} {rid}",
        "chosen": chosen,
        "rejected": rejected,
        "num_correct": len(chosen),
    }


ROWS = [
    _row("f1", "Factuality", ["0.9 0"], ["0.1 0", "0.2 0", "0.3 0"]),
    _row("f2", "Factuality", ["0.5 1"], ["0.5 0", "0.1 0", "0.0 0"]),
    _row("m1", "Math", ["0.1 0.2"], ["0.4 0.1"]),
    _row("s1", "Safety", ["1 -1"], ["0 0", "0.5 0"]),
    _row("fo1", "Focus", ["0.2 0.3"], ["0.2 0.3"]),
    _row("p1", "Precise IF", ["0.3 0.3"], ["0.2 0.4"]),
    _row("ref:1", "Ties", ["0.9 0.5"], ["0.1 0.6", "0.2 0.6"], prompt="t"),
    _row("tied:1", "Ties", ["0.8 0.5", "0.7 0.5", "0.9 0.5"], ["0.3 0.6"], prompt="t"),
    _row("ref:2", "Ties", ["0.1 0.9"], ["0.5 0.1"], prompt="t"),
]

# By hand. Head x (first coordinate) and head y (second):
# Factuality: f1 x: 0.9 beats all -> 1; y: four-way tie at 0 -> 1/4.
#             f2 x: ties 0.5 with one rejected -> 1/2; y: 1 > 0 -> 1.
# Math x 0, y 1. Safety x 1, y 0. Focus: identical texts, two-way tie -> 1/2 each.
# Precise IF x 1, y 0.
# Ties, x: ref:1 accurate, margin 0.7; tied:1 accurate, spread 0.2, margin 0.4; ref:2 wrong.
#   0.3*1 + 0.3*(1/2) + 0.2*(0.4 > 0.2) + 0.2*(min(0.7, 0.4) > 0.2) + 0.01*tanh(0.4/0.2 - 1)
# Ties, y: ref:1 wrong (margin -0.1); tied:1 wrong, spread 0, margin -0.1; ref:2 right.
#   0.3*0 + 0.3*(1/2) + 0 + 0 + 0.01*tanh(-0.1/0 - 1) = 0.15 - 0.01
EXPECTED_X = {
    "Factuality": 0.75,
    "Math": 0.0,
    "Safety": 1.0,
    "Focus": 0.5,
    "Precise IF": 1.0,
    "Ties": 0.85 + 0.01 * math.tanh(1.0),
}
EXPECTED_Y = {
    "Factuality": 0.625,
    "Math": 1.0,
    "Safety": 0.0,
    "Focus": 0.5,
    "Precise IF": 0.0,
    "Ties": 0.14,
}


def _model(d=2, basis=None, backbone="table-2"):
    return LowRankReward.from_arrays(
        basis if basis is not None else torch.eye(d)[:, :2],
        torch.tensor([[1.0, 0.0], [0.25, 0.75]]),
        ["alice", "bob"],
        scale=0.01,
        backbone=backbone,
    )


@pytest.fixture
def rb_file(tmp_path):
    path = tmp_path / "rb2.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def test_scores_match_hand_computation(rb_file):
    result = evaluate_rewardbench(_model(), rb_file, TableEmbedder(), users=["alice", "bob"])
    heads = result["heads"]
    assert list(heads) == [
        "reference",
        "basis[0]",
        "basis[1]",
        "population",
        "user:alice",
        "user:bob",
    ]
    for subset, value in EXPECTED_X.items():
        assert heads["basis[0]"][subset] == pytest.approx(value), subset
        assert heads["user:alice"][subset] == pytest.approx(value), subset
    for subset, value in EXPECTED_Y.items():
        assert heads["basis[1]"][subset] == pytest.approx(value), subset
    assert heads["basis[0]"]["overall"] == pytest.approx(sum(EXPECTED_X.values()) / 6)
    assert heads["basis[1]"]["overall"] == pytest.approx(sum(EXPECTED_Y.values()) / 6)
    assert result["counts"] == {
        "Factuality": 2,
        "Precise IF": 1,
        "Math": 1,
        "Safety": 1,
        "Focus": 1,
        "Ties": 3,
    }
    # Focus's chosen and rejected are the same text: embedded once.
    assert result["texts"] == sum(len(r["chosen"]) + len(r["rejected"]) for r in ROWS) - 1
    # reference head (x - y): Math 0.1-0.2 = -0.1 vs 0.4-0.1 = 0.3 -> wrong
    assert heads["reference"]["Math"] == 0.0 and heads["reference"]["Safety"] == 1.0


def test_parquet_and_cached_store_give_the_same_scores(rb_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rb2.parquet")
    a = evaluate_rewardbench(_model(), rb_file, TableEmbedder())
    b = evaluate_rewardbench(
        _model(), tmp_path / "rb2.parquet", TableEmbedder(), cache=tmp_path / "cache"
    )
    assert a["heads"] == b["heads"]
    # the shared content-addressed cache: one backbone folder, its segments complete stores
    assert len(list((tmp_path / "cache").glob("*/*/embeddings/manifest.json"))) == 1

    def refuse(conversations):
        raise AssertionError(f"{len(conversations)} texts embedded again")

    same_backbone = TableEmbedder()
    same_backbone.embed = refuse
    c = evaluate_rewardbench(_model(), rb_file, same_backbone, cache=tmp_path / "cache")
    assert c["heads"] == a["heads"]  # every text came from the cache


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(_row("x", "Math", ["1 0"], ["0 0"]))
        + "\n"
        + json.dumps({"prompt": "p", "chosen": ["a"], "subset": "Math"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl, row 1: missing field 'rejected'"):
        read_rewardbench(bad)
    bad.write_text(json.dumps(_row("7", "Ties", ["1 0"], ["0 0"])) + "\n")
    with pytest.raises(DataError, match="ref:<n>"):
        read_rewardbench(bad)
    bad.write_text(json.dumps(_row("7", "Chat", ["1 0"], ["0 0"])) + "\n")
    with pytest.raises(DataError, match="unknown subset 'Chat'"):
        read_rewardbench(bad)
    with pytest.raises(DataError, match="d = 2 but the model has d = 3"):
        evaluate_rewardbench(_model(d=3), _write(tmp_path), TableEmbedder())


def _write(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    return path


def test_cli_rewardbench(rb_file, tmp_path):
    from typer.testing import CliRunner

    from lore_rm.cli import app
    from lore_rm.embed import HashingEmbedder

    model = _model(
        d=16,
        basis=torch.randn(16, 2, generator=torch.Generator().manual_seed(0)),
        backbone="hashing-16",
    )
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "scores.json"
    res = CliRunner().invoke(
        app,
        [
            "rewardbench",
            str(tmp_path / "model"),
            "--data",
            str(rb_file),
            "--user",
            "bob",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Factuality" in res.output and "user:bob" in res.output
    saved = json.loads(out.read_text())
    direct = evaluate_rewardbench(model, rb_file, HashingEmbedder(16), users=["bob"])
    assert saved["heads"] == direct["heads"] and saved["backbone"] == "hashing-16"
    res = CliRunner().invoke(app, ["rewardbench", str(tmp_path / "nope"), "--data", str(rb_file)])
    assert res.exit_code == 2 and "config.json" in res.output
