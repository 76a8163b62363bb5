"""``--config FILE`` reruns ``lore demo`` and ``lore evaluate`` from the config.json they
wrote; options given beside it override the file one by one."""

from __future__ import annotations

import json

import pytest
from test_cli_fit import _two_kinds_of_users
from typer.testing import CliRunner

from lore_rm.cli import app

SMALL = ["--n-seen", "16", "--n-unseen", "8", "--d", "8", "--true-rank", "2", "--ranks", "1,2"]
SMALL += ["--shots", "2", "--trials", "1", "--active", "0", "--weight-decay", "0.1"]


def run(*args, quiet: bool = True) -> str:
    extra = ["--no-progress", "--threads", "1"] if quiet else []
    res = CliRunner().invoke(app, [*map(str, args), *extra])
    assert res.exit_code == 0, res.output
    return res.output


def numbers(folder) -> dict:
    report = json.loads((folder / "report.json").read_text())
    report.pop("seconds", None)
    for row in report["ranks"]:
        row.pop("fit_seconds", None)
    return report


def test_a_demo_reruns_from_its_config(tmp_path):
    run("demo", "--out", tmp_path / "a", *SMALL)
    config = tmp_path / "a" / "config.json"
    run("demo", "--config", config, "--out", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == json.loads(
        config.read_text()
    )
    assert numbers(tmp_path / "b") == numbers(tmp_path / "a")

    run("demo", "--config", config, "--out", tmp_path / "c", "--seed", "1", "--weight-decay", "1")
    changed = json.loads((tmp_path / "c" / "config.json").read_text())
    assert changed["seed"] == 1 and changed["settings"] == {"weight_decay": 1.0}
    assert changed["population"]["n_seen"] == 16 and changed["ranks"] == [1, 2]


def test_a_config_of_another_command_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"command": "evaluate"}))
    res = CliRunner().invoke(app, ["demo", "--config", str(tmp_path / "config.json")])
    assert res.exit_code == 2
    assert "written by `lore evaluate`, not `lore demo`" in res.output
    res = CliRunner().invoke(app, ["demo", "--config", str(tmp_path / "absent.json")])
    assert res.exit_code == 2 and "absent.json: no such file" in res.output


@pytest.mark.slow
def test_an_evaluation_reruns_from_its_config_without_naming_the_dataset(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=12, per_user=12)
    ds = tmp_path / "ds"
    run("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25", quiet=False)
    run("embed", ds, "--backbone", "hashing-16", "--no-progress", quiet=False)
    run("evaluate", ds, "--out", tmp_path / "a", "--ranks", "1,2", "--shots", "1", "--trials", "1",
        "--weight-decay", "0.1", "--group-by", "")  # fmt: skip
    run("evaluate", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b")
    first, again = (json.loads((tmp_path / f / "config.json").read_text()) for f in "ab")
    assert again == first and first["dataset"] == str(ds)
    assert numbers(tmp_path / "b") == numbers(tmp_path / "a")
