"""`lore fit --all-data`: the model to deploy after evaluating, fitted on every comparison."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli_fit import _cli, _two_kinds_of_users

from lore_rm import LowRankReward
from lore_rm.data import PreferenceDataset

pytestmark = pytest.mark.slow  # prepare, embed and two fits through the CLI


def test_all_data_fits_every_user_on_every_comparison(tmp_path):
    src, ds = tmp_path / "prefs.jsonl", tmp_path / "ds"
    _two_kinds_of_users(src, n_users=16, per_user=12)
    assert _cli("prepare", "generic", src, "--out", ds).exit_code == 0
    assert _cli("embed", ds, "--backbone", "hashing-64", "--no-progress").exit_code == 0
    settings = ["--rank", "2", "--weight-decay", "0.1", "--no-progress"]
    res = _cli("fit", ds, "--out", tmp_path / "eval", *settings)
    assert res.exit_code == 0, res.output
    assert "unseen users / unseen prompts" in res.output

    res = _cli("fit", ds, "--out", tmp_path / "deploy", "--all-data", *settings, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    table = PreferenceDataset(ds).comparisons
    users = sorted(set(table.column("user_id").to_pylist()))
    assert summary["all_data"] is True and summary["n_users"] == len(users) == 16
    assert f"Fitted on all {table.num_rows} comparisons of 16 users (--all-data)" in res.stderr
    assert "unseen users / unseen prompts" not in res.stderr  # no held-out numbers
    model = LowRankReward.from_pretrained(tmp_path / "deploy")
    assert sorted(model.users_) == users
    training = json.loads((tmp_path / "deploy" / "training.json").read_text())
    assert training["all_data"] is True
    evaluated = LowRankReward.from_pretrained(tmp_path / "eval")
    assert len(evaluated.users_) == 16  # seen users fitted, unseen ones personalised
    # the deployed model learned from more comparisons: another basis; no held-out number
    assert not torch.equal(model.basis_, evaluated.basis_)
    accuracy = summary["accuracy"]
    assert accuracy["train"] > 0.5 and accuracy["seen_test"] is None
