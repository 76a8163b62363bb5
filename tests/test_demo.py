"""`lore demo` end to end on a small setting, through the real CLI entry point."""

import json

import pytest
from typer.testing import CliRunner

from lore_rm.cli import app

pytestmark = pytest.mark.slow  # integration: the whole demo command


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--out",
            str(out),
            "--ranks",
            "0..3",
            "--shots",
            "2,5",
            "--trials",
            "2",
            "--n-seen",
            "40",
            "--n-unseen",
            "20",
            "--d",
            "12",
            "--true-rank",
            "2",
            "--active",
            "3",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "oracle" in result.output and "unseen users" in result.output
    names = ("report.json", "ranks.csv", "shots.csv", "ranks.png", "shots.png", "config.json")
    for name in (*names, "active.csv", "active.png"):
        assert (out / name).stat().st_size > 0, name
    assert "questions asked" in result.output
    report = json.loads((out / "report.json").read_text())
    assert [r["rank"] for r in report["ranks"]] == [0, 1, 2, 3]
    assert [r["shots"] for r in report["shots"]] == [2, 5]
    learned = [r for r in report["ranks"] if r["rank"] > 0]
    best = max(r["seen_test"] for r in learned)
    chosen = min(r["rank"] for r in learned if r["seen_test"] >= best - 0.005)
    assert report["selected_rank"] == chosen and report["shots"][0]["rank"] == chosen
    assert 0.5 < report["oracle"]["unseen_test"] <= 1.0
    assert (out / "ranks.csv").read_text().splitlines()[0].startswith("rank,alpha,recipe,train")
    assert json.loads((out / "config.json").read_text())["population"]["n_seen"] == 40
    active = report["active"]
    assert [(r["criterion"], r["questions"]) for r in active] == [
        (c, q) for c in ("information", "random") for q in range(4)
    ]
    assert [r["trials"] for r in active if r["questions"] == 3] == [1, 2]  # information: one pool
    assert all(r["rank"] == chosen for r in active)


def test_demo_rejects_bad_ranks(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--ranks", "a..b"])
    assert result.exit_code != 0
    assert "--ranks" in result.output


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == "0.1.0"
    assert "demo" in runner.invoke(app, ["--help"]).output
