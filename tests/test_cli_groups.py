"""--group-by through the commands: prepare (users table) -> embed -> evaluate / fit, on the
planted population of examples/planted_groups.py (one region's preference differs)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lore_rm.cli import app

pytestmark = pytest.mark.slow  # integration: prepare, embed, evaluate and fit commands

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "planted_groups.py"


def _planted(folder: Path) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location("planted_groups", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows, users = mod.population(n_north=18, n_south=8, per_user=30, sharpness=3.0, seed=1)
    folder.mkdir()
    prefs, table = folder / "prefs.jsonl", folder / "users.csv"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["user_id", "region", "age"])
        w.writeheader()
        w.writerows(users)
    return prefs, table


def _ok(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_group_report_and_model_card(tmp_path):
    prefs, table = _planted(tmp_path / "in")
    ds, report, model = tmp_path / "ds", tmp_path / "report", tmp_path / "model"
    out = _ok("prepare", "generic", prefs, "--out", ds, "--user-attributes", table)
    assert "users table (users.parquet): population, region, age" in out
    _ok("embed", ds, "--backbone", "hashing-256", "--no-progress")
    args = ["evaluate", ds, "--out", report, "--ranks", "1,2", "--shots", "", "--no-progress"]
    out = _ok(*args, "--group-by", "region,population", "--json")
    summary = json.loads(out[out.index("{") :])
    groups = summary["groups"]
    assert groups["worst"]["region"]["pooled"] == "south"
    assert groups["worst"]["region"]["shared"] == "south"
    by = {(g["column"], g["group"]): g for g in groups["groups"]}
    south, north = by[("region", "south")], by[("region", "north")]
    assert south["pooled"] < north["pooled"] - 0.2
    assert south["gain_lower"] > 0.05  # personal weights serve the south, sure of it
    assert {g for (c, g) in by if c == "population"} == {"seen", "unseen"}
    assert set(groups["tails"]) == {"pooled", "shared", "personal"}
    files = {p.name for p in report.iterdir()}
    assert {"groups.json", "groups.csv", "users.csv", "groups.png"} <= files
    assert json.loads((report / "report.json").read_text())["groups"] == groups
    with open(report / "users.csv") as f:
        per_user = list(csv.DictReader(f))
    assert len(per_user) == 26 and {"region", "pooled", "shared", "personal"} <= set(per_user[0])

    _ok("fit", ds, "--out", model, "--rank", "2", "--weight-decay", "0.001", "--no-progress")
    card = (model / "README.md").read_text()
    assert "## Training population" in card and "### by region" in card
    assert "### by age" in card and "### by population" not in card  # seen users only
    south_line = next(line for line in card.splitlines() if line.startswith("| south |"))
    assert south_line.split("|")[2].strip() == str(
        sum(1 for u in per_user if u["region"] == "south" and u["population"] == "seen")
    )


def test_group_by_errors_before_any_fit(tmp_path):
    prefs, table = _planted(tmp_path / "in")
    _ok("prepare", "generic", prefs, "--out", tmp_path / "ds", "--user-attributes", table)
    _ok("embed", tmp_path / "ds", "--backbone", "hashing-64", "--no-progress")
    res = CliRunner().invoke(
        app,
        ["evaluate", str(tmp_path / "ds"), "--group-by", "religion", "--out", str(tmp_path / "r")],
    )
    assert res.exit_code == 2
    assert "no column 'religion'" in res.output and "population, region, age" in res.output
    _ok("prepare", "generic", prefs, "--out", tmp_path / "bare")
    _ok("embed", tmp_path / "bare", "--backbone", "hashing-64", "--no-progress")
    res = CliRunner().invoke(
        app,
        ["evaluate", str(tmp_path / "bare"), "--group-by", "region", "--out", str(tmp_path / "r")],
    )
    assert res.exit_code == 2 and "needs a users table" in res.output
    assert not (tmp_path / "r").exists()
