"""PersonalRewardBench's score: both orderings of every test pair, per user and pooled, with
bootstrap intervals; and the command on a prepared, embedded dataset."""

from __future__ import annotations

import json

import pytest
import torch
from test_data_personalrewardbench import hub_files, rows
from typer.testing import CliRunner

from lore_rm.cli import app
from lore_rm.comparisons import Comparisons
from lore_rm.data import PersonalRewardBenchConfig, prepare_personalrewardbench
from lore_rm.embed.split import load_split
from lore_rm.evaluate.personalrewardbench import (
    both_orderings,
    score_margins,
    score_personalrewardbench,
)
from lore_rm.fit.model import LowRankReward
from lore_rm.metrics import bootstrap_mean


def test_both_orderings_and_ties():
    m = torch.tensor([2.0, -1.0, 0.0, 0.5])
    # (chosen, rejected) order, then (rejected, chosen): a reward model agrees with itself,
    # and a tie names neither response in either order
    assert both_orderings(m).tolist() == [1, 0, 0, 1, 1, 0, 0, 1]


def test_score_per_user_and_pooled():
    data = Comparisons.from_features(torch.zeros(5, 2), ["a", "a", "a", "b", "b"])
    margins = torch.tensor([1.0, 1.0, -1.0, 0.0, 3.0])
    other = Comparisons.from_features(torch.zeros(2, 2), ["c", "c"])
    score = score_margins([(margins, data), (torch.tensor([1.0, 2.0]), other)], n_boot=300)
    assert score.per_user == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
    assert (score.pairs, score.judgments, score.ties) == (7, 14, 1)
    judged = torch.cat([both_orderings(margins), both_orderings(torch.tensor([1.0, 2.0]))])
    assert score.pooled == bootstrap_mean(judged, n_boot=300)  # over the 14 judgments
    assert score.pooled.mean == pytest.approx(5 / 7)
    per_user = torch.tensor([2 / 3, 0.5, 1.0], dtype=torch.float64)
    assert score.user_mean == bootstrap_mean(per_user, n_boot=300)  # over the 3 users
    d = score.to_dict()
    assert d["users"] == 3 and d["accuracy"]["mean"] == pytest.approx(5 / 7)


@pytest.mark.slow
def test_command_on_a_prepared_dataset(tmp_path):
    """prepare -> embed -> fit (seen users only) -> lore personalrewardbench: the unseen
    users are fitted from their own train + val pairs, then every test pair is scored."""
    data = rows()
    for r in data:  # two test pairs whose label goes against everything the users taught
        if r["user_id"] in ("user2", "user5") and r["chosen"]["content"].endswith(" 6"):
            r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    cfg = PersonalRewardBenchConfig(unseen_fraction=0.5)
    ds = prepare_personalrewardbench(hub_files(tmp_path / "prb", data), tmp_path / "ds", cfg)
    runner = CliRunner()

    def ok(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res.output

    ok("embed", ds, "--backbone", "hashing-64", "--no-progress")
    model_dir = tmp_path / "model"
    ok(
        "fit",
        ds,
        "--out",
        model_dir,
        "--rank",
        "2",
        "--weight-decay",
        "0.01",
        "--no-personalize-unseen",
        "--no-progress",
    )
    out = ok("personalrewardbench", model_dir, ds, "--json", "--out", tmp_path / "s.json")
    got = json.loads(out[out.index("{") :])
    assert got == json.loads((tmp_path / "s.json").read_text())
    assert got["users"] == 6 and got["pairs"] == 18 and got["judgments"] == 36

    split, _ = load_split(ds)
    model = LowRankReward.from_pretrained(model_dir)
    assert not set(split.unseen_test.user_ids) & set(model.users_)
    by_hand = model.copy().personalize(split.unseen_fewshot)
    right = [(by_hand.margins(d) > 0).double() for d in (split.seen_test, split.unseen_test)]
    assert got["accuracy"]["mean"] == pytest.approx(float(torch.cat(right).mean()))
    assert got["accuracy"]["mean"] == pytest.approx(16 / 18)
    assert got["per_user"]["user2"] == pytest.approx(2 / 3)
    api = score_personalrewardbench(model, split).to_dict()
    assert api == {k: v for k, v in got.items() if k not in ("model", "dataset")}
