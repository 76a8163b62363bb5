"""lore fit / evaluate --json, lore model info and lore score, through the CLI (hashing-64)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_cli_fit import _cli, _two_kinds_of_users
from typer.testing import CliRunner

from lore_rm import LowRankReward
from lore_rm.cli import app as cli_app
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve.export import load_with_served_users

pytestmark = pytest.mark.slow  # integration: prepare, embed, fit, evaluate, score commands


def _ok(*args):
    res = _cli(*args)
    assert res.exit_code == 0, res.output
    return res


def _conv(prompt, response):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _onboard(model_dir, user, n=6):
    """``user`` onboarded into the serve database next to the model (likes long answers)."""
    from lore_rm.serve.service import RewardService, default_db_path
    from lore_rm.serve.user_store import StoredComparison

    model = LowRankReward.from_pretrained(model_dir)
    service = RewardService(model, HashingEmbedder(64), default_db_path(model_dir), warm_up=False)
    pairs, raw = [], []
    for j in range(n):
        prompt = f"tell me about rivers number {j}"
        chosen, rejected = "rivers are nice because they flow a long way", "rivers are nice"
        pairs.append((_conv(prompt, chosen), _conv(prompt, rejected)))
        raw.append(
            StoredComparison(_conv(prompt, chosen)[:1], [pairs[-1][0][1]], [pairs[-1][1][1]])
        )
    service.onboard(user, pairs, raw)
    service.store.close()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A dataset embedded with hashing-64, `lore fit --json` on it, one onboarded user."""
    tmp = tmp_path_factory.mktemp("cli-model")
    src, ds, model_dir = tmp / "prefs.jsonl", tmp / "ds", tmp / "model"
    _two_kinds_of_users(src)
    _ok("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25")
    _ok("embed", ds, "--backbone", "hashing-64", "--no-progress")
    res = _ok("fit", ds, "--out", model_dir, "--no-progress", "--json")
    summary = json.loads(res.stdout)  # nothing but JSON on stdout
    _onboard(model_dir, "newbie")
    return ds, model_dir, summary


def test_fit_json_summary(fitted):
    _, model_dir, s = fitted
    assert s["out"] == str(model_dir) and s["backbone"] == "hashing-64"
    assert s["rank"] == 2 and s["requested_rank"] == "auto" and s["recipe"] == "default"
    assert s["n_users"] == 24 and s["weight_decay"] > 0
    sel = s["selection"]
    assert sel["folds"] == 5 and sel["n_fits"] > 0 and sel["seconds"] > 0
    assert sel["rule"] and sel["rank"] == 2 and sel["weight_decay"] == s["weight_decay"]
    acc = s["accuracy"]
    for key in ("train", "seen_test", "fewshot_train", "unseen_test"):
        assert 0 <= acc[key] <= 1 and acc[f"{key}_std"] >= 0
    assert acc["unseen_test"] > 0.9
    diag = s["diagnostics"]
    assert diag["validated"] is True and diag["no_signal"] == [] and diag["converged"] is True
    assert diag["warnings"] == []
    assert s["fit_seconds"] > 0 and s["moved_database"] == []


def test_evaluate_json_summary(fitted, tmp_path):
    ds = fitted[0]
    report = tmp_path / "report"
    res = _ok(
        "evaluate", ds, "--out", report, "--ranks", "0..2", "--shots", "2,4", "--trials", "1",
        "--no-progress", "--json",
    )  # fmt: skip
    s = json.loads(res.stdout)
    assert "unseen users" in res.stderr  # the tables go to stderr
    assert s["out"] == str(report) and (report / "report.json").is_file()
    assert "report.json" in s["files"] and "shots.csv" in s["files"]
    assert [r["rank"] for r in s["ranks"]] == [0, 1, 2]
    assert s["ranks"][2]["unseen_test"] > 0.9 and "unseen_test_std" in s["ranks"][2]
    assert s["selected"] == {"rank": 2, "alpha": 0.0} and s["shots_rank"] == 2
    assert [r["shots"] for r in s["shots"]] == [2, 4]
    assert s["notes"] == [] and s["ranks_skipped"] == []


def test_model_info(fitted, tmp_path):
    ds, model_dir, _ = fitted
    res = _ok("model", "info", model_dir)
    for text in ("hashing-64", "requested auto", "onboarded", "weight_decay"):
        assert text in res.stdout
    s = json.loads(_ok("model", "info", model_dir, "--json").stdout)
    assert s["rank"] == 2 and s["d"] == 64 and s["n_components"] == 2
    assert s["backbone"] == "hashing-64" and s["recipe"] == "default"
    assert s["users"]["model"] == 24 and s["users"]["onboarded"] == 1
    assert s["users"]["onboarded_new"] == 1 and s["users"]["total"] == 25
    assert s["users"]["database"].endswith("lore-serve.sqlite")
    assert s["fit_config"]["weight_decay"] > 0 and s["fit_config"]["cv_folds"] == 5
    assert s["lore_rm_version"] and s["format_version"] == 5
    training = s["training"]
    assert training["dataset"] == str(ds) and training["selection"]["rank"] == 2
    assert training["diagnostics"]["converged"] is True
    assert training["accuracy"]["unseen_test"] > 0.9
    assert s["personalizes"] and s["personalization"] == 1.0 and s["weights"] == "simplex"
    report = training["personalization"]
    assert report["summary"].startswith("Personalisation gains +") and "per_user" not in report
    assert "Personalisation gains +" in res.stdout

    # a model saved from Python has no training.json
    bare = tmp_path / "bare"
    LowRankReward.from_pretrained(model_dir).save_pretrained(bare)
    assert json.loads(_ok("model", "info", bare, "--json").stdout)["training"] is None
    assert "no training.json" in _ok("model", "info", bare).stdout

    for folder in (ds, tmp_path / "missing"):
        res = _cli("model", "info", folder)
        assert res.exit_code == 2 and "error:" in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def _rows():
    return [
        {"user": "user00", "prompt": "tell me about apples", "response": "apples are nice"},
        {
            "user_id": "user01",
            "messages": _conv("tell me about chess", "chess are nice because of a long story"),
            "id": "x1",
        },
        {"user": "newbie", "prompt": "tell me about bread", "response": "bread is nice"},
        {"user": "user00", "prompt": "tell me about apples", "response": "apples are nice"},
    ]


def _expected(model_dir, rows, unknown="error"):
    model, _, _ = load_with_served_users(model_dir)
    convs = [r.get("messages") or _conv(r["prompt"], r["response"]) for r in rows]
    users = [r.get("user", r.get("user_id")) for r in rows]
    return model.reward(HashingEmbedder(64).embed(convs), users, unknown=unknown)


def test_score_matches_the_model(fitted, tmp_path):
    model_dir = fitted[1]
    rows = _rows()
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = _expected(model_dir, rows)

    res = _ok("score", model_dir, src, "--no-progress")  # JSON Lines on stdout
    got = [json.loads(line) for line in res.stdout.splitlines()]
    assert [g["index"] for g in got] == [0, 1, 2, 3]
    assert [g["user"] for g in got] == ["user00", "user01", "newbie", "user00"]
    assert [g["id"] for g in got] == [None, "x1", None, None]
    assert all(g["known"] for g in got)  # newbie: from the serve database
    assert torch.allclose(torch.tensor([g["reward"] for g in got]), want, atol=1e-6)

    out = tmp_path / "scores.jsonl"
    _ok("score", model_dir, src, "--out", out, "--no-progress", "--backbone", "hashing-64")
    assert [json.loads(line) for line in out.read_text().splitlines()] == got

    table = tmp_path / "rows.parquet"  # parquet in (nulls for absent fields), CSV out
    keys = ["user", "user_id", "prompt", "response", "messages", "id"]
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), table)
    csv_out = tmp_path / "scores.csv"
    _ok("score", model_dir, table, "--out", csv_out, "--no-progress")
    lines = csv_out.read_text().splitlines()
    assert lines[0] == "index,id,user,reward,known" and len(lines) == 5
    rewards = [float(line.split(",")[3]) for line in lines[1:]]
    assert torch.allclose(torch.tensor(rewards), want, atol=1e-6)


def test_score_unknown_users(fitted, tmp_path):
    model_dir = fitted[1]
    rows = [*_rows(), {"user": "stranger", "prompt": "p", "response": "r"}]
    rows.append({"user": "alien", "prompt": "p", "response": "r"})
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    res = _cli("score", model_dir, src, "--no-progress")
    assert res.exit_code == 2 and "'stranger'" in res.output and "'alien'" in res.output
    assert res.stdout == ""

    res = _ok("score", model_dir, src, "--unknown", "mean", "--no-progress")
    got = [json.loads(line) for line in res.stdout.splitlines()]
    assert [g["known"] for g in got] == [True] * 4 + [False, False]
    want = _expected(model_dir, rows, unknown="mean")
    assert torch.allclose(torch.tensor([g["reward"] for g in got]), want, atol=1e-6)
    assert "unknown users" in res.stderr


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"prompt": "p", "response": "r"}', "line 2: missing field 'user' (or 'user_id')"),
        ('{"user": "user00", "prompt": "p"}', "line 2: missing field 'response'"),
        ('{"user": "user00", "messages": [{"role": "bot", "content": "x"}]}',
         "line 2: 'messages'[0] has role 'bot'"),
        ('{"user": "user00", "messages": [{"role": "user", "content": "x"}]}',
         "line 2: 'messages': the last message must be the assistant"),
        ('{"user": "user00", "prompt": "p", "response": 3}', "line 2: 'response' must be a string"),
        ('{"user": "user00", "prompt": "p"', "line 2: not valid JSON"),
    ],
)  # fmt: skip
def test_score_bad_rows_are_one_line_errors(fitted, tmp_path, line, fragment):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(_rows()[0]) + "\n" + line + "\n")
    res = _cli("score", fitted[1], src, "--no-progress")
    assert res.exit_code == 2, res.output
    assert f"{src}: {fragment}" in res.output and len(res.output.strip().splitlines()) == 1


def test_model_info_says_what_the_folds_held_out(fitted):
    """lore fit's default search holds out whole users; model info used to say comparisons."""
    model_dir = fitted[1]
    training = json.loads((model_dir / "training.json").read_text())
    assert training["history"]["selection"]["holdout"] == "users"
    res = CliRunner().invoke(cli_app, ["model", "info", str(model_dir)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "holding out users" in res.stdout and "holding out comparisons" not in res.stdout
    assert (
        json.loads(_ok("model", "info", model_dir, "--json").stdout)["training"]["selection"][
            "holdout"
        ]
        == "users"
    )


def test_rank_matches_the_model_and_ranks_best_first(fitted, tmp_path):
    model_dir = fitted[1]
    responses = ["apples are nice", "apples are nice because of a long story", "no", "no"]
    rows = [
        {"user": "user00", "prompt": "tell me about apples", "responses": responses, "id": 7},
        {"user_id": "newbie", "prompt": _conv("tell me about bread", "x")[:1],
         "responses": [[{"role": "assistant", "content": "bread"}], "bread is nice indeed"]},
    ]  # fmt: skip
    src = tmp_path / "cands.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _ok("rank", model_dir, src, "--no-progress")
    got = [json.loads(line) for line in res.stdout.splitlines()]
    assert [g["index"] for g in got] == [0, 1] and got[0]["id"] == 7
    model, _, _ = load_with_served_users(model_dir)
    emb = HashingEmbedder(64)
    want = model.reward(emb.embed([_conv("tell me about apples", r) for r in responses]), "user00")
    assert got[0]["rewards"] == pytest.approx(want.tolist(), rel=1e-5)
    r = got[0]["rewards"]
    assert [r[i] for i in got[0]["ranking"]] == sorted(r, reverse=True)
    assert got[0]["ranking"].index(2) < got[0]["ranking"].index(3)  # the tie keeps its order
    assert got[0]["lower"] is None and got[0]["known"] is True  # a seen user: no posterior
    assert got[1]["lower"] is not None and got[1]["uncertain"] in (True, False)  # onboarded
    assert all(lo <= x <= hi for lo, x, hi in zip(got[1]["lower"], got[1]["rewards"],
                                                   got[1]["upper"], strict=True))  # fmt: skip

    ghost = tmp_path / "ghost.jsonl"
    ghost.write_text(json.dumps({"user": "ghost", "prompt": "p", "responses": ["a"]}) + "\n")
    res = _cli("rank", model_dir, ghost, "--no-progress")
    assert res.exit_code == 2 and "ghost" in res.output and "Traceback" not in res.output
    res = _ok("rank", model_dir, ghost, "--no-progress", "--unknown", "mean")
    assert json.loads(res.stdout)["known"] is False
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"user": "user00", "prompt": "p", "responses": []}) + "\n")
    res = _cli("rank", model_dir, bad, "--no-progress")
    assert res.exit_code == 2 and "bad.jsonl: line 1" in res.output and "responses" in res.output


def test_model_explain(fitted, tmp_path):
    ds, model_dir, _ = fitted
    out = tmp_path / "explain.json"
    res = _ok("model", "explain", model_dir, ds, "--top", "3", "--out", out)
    assert "column 0" in res.stdout and "users leaning on it most" in res.stdout
    report = json.loads(out.read_text())
    assert report["n_columns"] == 2 and len(report["columns"]) == 2
    assert sum(c["share"] for c in report["columns"]) == pytest.approx(1.0)
    for c in report["columns"]:
        assert len(c["highest"]) == 3 and len(c["lowest"]) == 3
        assert c["highest"][0]["score"] >= c["highest"][-1]["score"]
        assert c["highest"][-1]["score"] >= c["lowest"][-1]["score"]
        assert len(c["top_users"]) == 5
        assert c["top_users"][0]["weight"] >= c["top_users"][-1]["weight"]
    # the two kinds of users load on different columns
    assert {c["top_users"][0]["user"] for c in report["columns"]} != {None}
    raw = json.loads(_ok("model", "explain", model_dir, ds, "--center", "none", "--json").stdout)
    assert raw["center"] == "none" and raw["n_texts_listed"] == raw["n_texts"]
    res = _cli("model", "explain", model_dir, tmp_path / "missing")
    assert res.exit_code == 2 and "Traceback" not in res.output
