"""What the commands say: counts in the singular for one, command-line options named in
command-line errors (Python arguments in Python errors), the way out of an error suggested."""

from __future__ import annotations

import json

import pytest
from serve_utils import shared_model_dir
from typer.testing import CliRunner

from lore_rm.cli import app
from lore_rm.data import prepare_generic
from lore_rm.errors import DataError
from lore_rm.fit.persistence import _prior_card
from lore_rm.wording import counted


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


def test_counted():
    assert counted(1, "user") == "1 user"
    assert counted(0, "user") == "0 users"
    assert counted(2, "EM iteration") == "2 EM iterations"
    assert counted(3, "index", "indices") == "3 indices"


def test_score_counts_one_user_in_the_singular_and_suggests_unknown_mean(tmp_path):
    model_dir = shared_model_dir()
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"user": "seen0", "prompt": "hi", "response": "hello"}) + "\n")
    res = cli("score", model_dir, rows, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "Scored 1 row for 1 user with hashing-64" in res.stderr
    rows.write_text(json.dumps({"user": "nobody", "prompt": "hi", "response": "hello"}) + "\n")
    res = cli("score", model_dir, rows, "--no-progress")
    assert res.exit_code == 2
    assert "unknown user id 'nobody'" in res.output
    assert "pass --unknown mean" in res.output


def test_the_model_card_counts_in_the_singular():
    prior = {"kind": "learned", "users": 1, "em_iterations": 1, "axis_std": [0.5]}
    text = _prior_card({"prior": prior})
    assert "from the 1 seen user (empirical Bayes, 1 EM iteration)" in text


@pytest.mark.filterwarnings("ignore:1 user with fewer than 2 comparisons")
def test_overwrite_is_named_as_an_option_on_the_command_line_only(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": "u"}]
    src = tmp_path / "prefs.jsonl"
    src.write_text(json.dumps(rows[0]) + "\n")
    out = prepare_generic(rows, tmp_path / "ds")
    with pytest.raises(DataError) as err:
        prepare_generic(rows, out)
    assert "pass overwrite=True" in str(err.value) and "--overwrite" not in str(err.value)
    res = cli("prepare", "generic", src, "--out", out)
    assert res.exit_code == 2
    assert "pass --overwrite" in res.output and "overwrite=True" not in res.output


@pytest.mark.parametrize("command", ["embed", "score", "rewardbench"])
def test_max_length_help_says_the_backbone_cap_applies(command):
    res = cli(command, "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.replace("│", " ").split())
    assert "The backbone's own cap applies when it is lower (minilm: 256" in text
