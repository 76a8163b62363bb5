"""``lore prepare personalrewardbench``: the benchmark's per-user splits kept as given."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from data_helpers import assert_fails_cleanly, folder_bytes, rows_with_texts, write_parquet

from lore_rm.data import PersonalRewardBenchConfig, PreferenceDataset, prepare_personalrewardbench

JUDGES = ("gemini/gemini-1.5-pro", "meta-llama/Llama-3.3-70B-Instruct")


def prb_row(user, split, i, flip, *, turns=1):
    """One comparison in the Hub layout (judge columns included, as released)."""
    context = []
    for t in range(turns):
        context.append({"role": "user", "content": f"{user} question {i}.{t}"})
        if t < turns - 1:
            context.append({"role": "model", "content": f"earlier answer {i}.{t}"})
    row = {
        "user_id": user,
        "split": split,
        "context": context,
        "chosen": {"role": "model", "content": f"{user} likes answer {i}"},
        "rejected": {"role": "model", "content": f"{user} dislikes answer {i}"},
        "flip": flip,
        "chosen_score": 80.0,
        "rejected_score": 20.0,
        "dataset": "prism",
        "query_reasoning": "personal",
        "personalizable_query": True,
        "response_reasoning": "differs",
        "personalizable_responses": True,
        "agreement": 0.5,
    }
    for judge in JUDGES:
        for kind in ("prediction", "prediction_flip"):
            row[f"{kind}_{judge}"] = "First"
        for kind in ("reasoning", "reasoning_flip"):
            row[f"{kind}_{judge}"] = "because"
    return row


def rows(n_users=6):
    out = []
    for u in range(n_users):
        user = f"user{u}"
        plan = ["train"] * 4 + ["val"] * 2 + ["test"] * 3
        for i, split in enumerate(plan):
            out.append(prb_row(user, split, i, flip=bool((u + i) % 2), turns=1 + i % 3))
    return out


def hub_files(root, data=None):
    """The Hub's parquet: the comparisons spread over two shards (the split column decides)."""
    data = rows() if data is None else data
    write_parquet(root / "data" / "train-00000-of-00001.parquet", data[::2])
    write_parquet(root / "data" / "test-00000-of-00001.parquet", data[1::2])
    return root


def test_splits_kept_as_given(tmp_path):
    out = prepare_personalrewardbench(hub_files(tmp_path / "prb"), tmp_path / "ds")
    got = rows_with_texts(out)
    assert len(got) == 6 * 9
    for r in got:
        expected = "seen-test" if r["source_split"] == "test" else "seen-train"
        assert r["split"] == expected
        user = r["user_id"]
        i = int(r["chosen_conv"][-1]["content"].rsplit(" ", 1)[1])
        assert r["source_split"] == (["train"] * 4 + ["val"] * 2 + ["test"] * 3)[i]
        assert r["flip"] == bool((int(user[4:]) + i) % 2)
        assert r["chosen_conv"][-1] == {"role": "assistant", "content": f"{user} likes answer {i}"}
        prompt = r["chosen_conv"][:-1]
        assert prompt == r["rejected_conv"][:-1]
        assert prompt[-1] == {"role": "user", "content": f"{user} question {i}.{i % 3}"}
        assert all(m["role"] in ("user", "assistant") for m in prompt)  # "model" read as assistant
    s = PreferenceDataset(out).summary()["roles"]
    assert s["seen-train"]["comparisons"] == 6 * 6 and s["seen-test"]["comparisons"] == 6 * 3
    assert s["unseen-fewshot"]["comparisons"] == 0
    users = pq.read_table(out / "users.parquet").to_pylist()
    assert users == [{"user_id": f"user{u}", "population": "seen"} for u in range(6)]


def test_unseen_users_keep_their_split(tmp_path):
    cfg = PersonalRewardBenchConfig(unseen_fraction=0.5, seed=3)
    got = rows_with_texts(
        prepare_personalrewardbench(hub_files(tmp_path / "p"), tmp_path / "d", cfg)
    )
    population: dict[str, set] = {}
    for r in got:
        population.setdefault(r["user_id"], set()).add(r["split"].split("-")[0])
        test = r["source_split"] == "test"
        assert r["split"].endswith("test") == test
        if r["split"].startswith("unseen"):
            assert r["split"] == ("unseen-test" if test else "unseen-fewshot")
    assert all(len(p) == 1 for p in population.values())
    # each user unseen by a stable draw from its id (about half of the six)
    assert 0 < sum(p == {"unseen"} for p in population.values()) < len(population)


def test_user_attributes_from_prism_survey(tmp_path):
    survey = tmp_path / "survey.jsonl"
    lines = []
    for u in range(6):
        rec = {
            "user_id": f"user{u}",
            "num_completed_conversations": 3,
            "self_description": "me",
            "gender": "Female" if u % 2 else "Male",
            "location": {"birth_country": "UK", "reside_country": "US" if u < 3 else "UK"},
            "stated_prefs": {"values": 10 * u},
            "lm_usecases": ["a", "b"],  # a list: not an attribute
        }
        lines.append(json.dumps(rec)[:-1] + ', "age": NaN}')  # the bare NaN PRISM holds
    survey.write_text("\n".join(lines) + "\n")
    out = prepare_personalrewardbench(
        hub_files(tmp_path / "p"), tmp_path / "d", user_attributes=survey
    )
    users = {u["user_id"]: u for u in pq.read_table(out / "users.parquet").to_pylist()}
    assert users["user4"] == {
        "user_id": "user4",
        "population": "seen",
        "num_completed_conversations": "3",
        "self_description": "me",
        "gender": "Male",
        "location_birth_country": "UK",
        "location_reside_country": "UK",
        "stated_prefs_values": "40",
        "age": None,
    }
    info = json.loads((out / "dataset.json").read_text())
    assert info["parameters"]["user_attributes"] == "survey.jsonl"
    assert [i["name"] for i in info["inputs"]][-1] == "survey.jsonl"


def test_hub_name_and_pinned_commit(tmp_path, monkeypatch):
    import huggingface_hub

    commit = "89abcdef0123456789abcdef0123456789abcdef"

    def fake_snapshot_download(repo_id, **kw):
        assert repo_id == "MichaelR207/chatbot_arena_personalized_0125"
        assert kw["repo_type"] == "dataset" and kw["revision"] is None
        return str(hub_files(tmp_path / "cache" / "snapshots" / commit))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    out = prepare_personalrewardbench(
        "MichaelR207/chatbot_arena_personalized_0125", tmp_path / "ds"
    )
    info = json.loads((out / "dataset.json").read_text())
    assert info["hub"]["commit"] == commit
    assert info["source"] == "MichaelR207/chatbot_arena_personalized_0125"
    local = prepare_personalrewardbench(tmp_path / "cache" / "snapshots" / commit, tmp_path / "l")
    for name in ("comparisons.parquet", "texts.parquet", "users.parquet"):
        assert folder_bytes(out)[name] == folder_bytes(local)[name]


def test_bad_inputs(tmp_path):
    out = tmp_path / "ds"
    data = rows(2)
    data[3]["split"] = "dev"
    src = write_parquet(tmp_path / "a.parquet", data)
    assert_fails_cleanly(
        lambda: prepare_personalrewardbench(src, out),
        out,
        "a.parquet: row 4",
        "'split' is 'dev' (expected train, val or test)",
    )
    data = rows(2)
    data[1]["context"] = [{"role": "narrator", "content": "x"}]
    src = write_parquet(tmp_path / "b.parquet", data)
    assert_fails_cleanly(
        lambda: prepare_personalrewardbench(src, out), out, "row 2", "context[0] has role"
    )
    data = [{k: v for k, v in r.items() if k != "context"} for r in rows(2)]
    src = write_parquet(tmp_path / "c.parquet", data)
    assert_fails_cleanly(
        lambda: prepare_personalrewardbench(src, out), out, "missing column(s) 'context'"
    )


def test_cli_matches_api(tmp_path):
    from typer.testing import CliRunner

    from lore_rm.cli import app

    root = hub_files(tmp_path / "p")
    args = ["prepare", "personalrewardbench", str(root), "--out", str(tmp_path / "cli")]
    res = CliRunner().invoke(app, [*args, "--unseen-fraction", "0.5", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = PersonalRewardBenchConfig(unseen_fraction=0.5)
    api = prepare_personalrewardbench(root, tmp_path / "api", cfg)
    assert folder_bytes(tmp_path / "cli") == folder_bytes(api)
