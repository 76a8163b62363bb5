"""``lore prepare prism``: dialogs to per-pair comparisons, filtering, the published split."""

from __future__ import annotations

import json

import numpy as np
from data_helpers import assert_fails_cleanly, folder_bytes, rows_with_texts, write_jsonl

from lore_rm.data import PreferenceDataset, PRISMConfig, prepare_prism

CFG = PRISMConfig(seen_fraction=0.5, min_dialogs=1)


def survey_lines():
    users = [("user0", 3), ("user1", 2), ("user2", 0), ("user3", 1), ("user4", 1), ("user5", 2)]
    lines = []
    for uid, n in users:
        rec = {
            "user_id": uid,
            "num_completed_conversations": n,
            "self_description": "me",
            "order_stated_prefs": {"values": 1},
            "location": {"birth_country": "X"},
        }
        lines.append(json.dumps(rec)[:-1] + ', "age": NaN}')  # a bare NaN, as in the source
    return lines


def user(turn, content):
    return {"turn": turn, "role": "user", "content": content}


def model(turn, content, chosen, score, k=0):
    return {
        "turn": turn,
        "role": "model",
        "content": content,
        "model_provider": "p",
        "model_name": f"m{k}",
        "score": score,
        "if_chosen": chosen,
        "within_turn_id": k,
    }


def dialog(cid, uid, history):
    return {
        "conversation_id": cid,
        "user_id": uid,
        "conversation_type": "unguided",
        "opening_prompt": history[0]["content"],
        "conversation_turns": 1 + max(h["turn"] for h in history),
        "conversation_history": history,
        "open_feedback": "ok",
    }


def conversations():
    return [
        dialog(
            "c0",
            "user0",
            [
                user(0, "Hello there"),
                model(0, "Hi A", True, 80, 0),
                model(0, "Hi B", False, 50, 1),
                model(0, "Hi C", False, 40, 2),
                model(0, "Hi D", False, 30, 3),
                user(1, "Tell me a joke"),
                model(1, "Joke 1", True, 70, 0),
                model(1, "Joke 2", False, 60, 1),
            ],
        ),
        dialog(
            "c1",
            "user0",
            [
                user(0, "Q"),
                model(0, "R1", True, 90, 0),
                model(0, "R2", False, 10, 1),
                user(1, "Q2"),
                model(1, "S1", True, 50, 0),
                model(1, "S2", True, 50, 1),  # both
                model(2, "T1", False, 20, 0),
                user(2, "Q3"),
                model(2, "T2", False, 90, 1),  # neither
                user(3, "Q4"),
                model(3, "U1", False, 5, 0),
                model(3, "U2", True, 95, 1),
            ],
        ),
        dialog("c2", "user0", [user(0, "lonely")]),  # no complete turn
        dialog("c3", "user1", [user(0, "Hi"), model(0, "x", True, 60), model(0, "y", False, 40)]),
        dialog(
            "c4",
            "user1",
            [
                user(0, "Yo"),
                model(0, "p", True, 60, 0),
                model(0, "q", False, 50, 1),
                model(0, "r", False, 40, 2),
                user(1, "Again"),
                model(1, "same", True, 60, 0),
                model(1, "same", False, 50, 1),
            ],
        ),
        dialog("c5", "user2", [user(0, "a"), model(0, "b", True, 1), model(0, "c", False, 0)]),
        dialog("c6", "user3", [user(0, "only"), model(0, "one", True, 50)]),  # no rejected
        dialog("c7", "user4", [user(0, "A?"), model(0, "B", True, 9), model(0, "C", False, 1)]),
        dialog("c8", "user9", [user(0, "who"), model(0, "me", True, 9), model(0, "you", False, 1)]),
    ]


def write_prism(root, conv_raw=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "survey.jsonl").write_text("\n".join(survey_lines()) + "\n")
    write_jsonl(root / "conversations.jsonl", conversations(), conv_raw)
    return root


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


EXPECTED = {  # dialog -> [(prompt, chosen, rejected)], by hand
    "c0": [
        ([U("Hello there")], "Hi A", "Hi B"),
        ([U("Hello there")], "Hi A", "Hi C"),
        ([U("Hello there")], "Hi A", "Hi D"),
        ([U("Hello there"), A("Hi A"), U("Tell me a joke")], "Joke 1", "Joke 2"),
    ],
    "c1": [
        ([U("Q")], "R1", "R2"),
        # turn 1 (both chosen) and turn 2 (neither) give nothing; the dialog goes on with
        # the first chosen response (S1), then the highest-scored one (T2)
        ([U("Q"), A("R1"), U("Q2"), A("S1"), U("Q3"), A("T2"), U("Q4")], "U2", "U1"),
    ],
    "c3": [([U("Hi")], "x", "y")],
    "c4": [([U("Yo")], "p", "q"), ([U("Yo")], "p", "r")],  # turn 1: identical responses
}


def published_roles():
    """The published preparation's shuffles, written out independently."""
    dialogs = {"user0": ["c0", "c1"], "user1": ["c3", "c4"], "user4": ["c7"], "user5": []}
    np.random.seed(123)
    users = np.array(list(dialogs))
    np.random.shuffle(users)
    roles = {}
    for pos, uid in enumerate(users):
        ids = np.array(dialogs[uid])
        if len(ids) > 1:
            np.random.shuffle(ids)
            base = "seen" if pos < int(len(users) * 0.5) else "unseen"
            half = int(len(ids) * 0.5)
            for j, cid in enumerate(ids):
                roles[str(cid)] = f"{base}-train" if j < half else f"{base}-test"
    return {c: r.replace("unseen-train", "unseen-fewshot") for c, r in roles.items()}


def test_comparisons_roles_and_filtering(tmp_path):
    out = prepare_prism(write_prism(tmp_path / "prism"), tmp_path / "ds", CFG)
    got = rows_with_texts(out)
    by_dialog = {}
    for r in got:
        by_dialog.setdefault(r["conversation_id"], []).append(r)
        assert r["chosen_conv"][:-1] == r["rejected_conv"][:-1]  # the same prompt
        assert r["prompt_id"] == f"{r['conversation_id']}:{r['turn']}"
    assert set(by_dialog) == set(EXPECTED)
    for cid, expected in EXPECTED.items():
        rows = by_dialog[cid]
        assert [
            (r["chosen_conv"][:-1], r["chosen_conv"][-1], r["rejected_conv"][-1]) for r in rows
        ] == [(p, A(c), A(rj)) for p, c, rj in expected]
        assert {r["user_id"] for r in rows} == {"user0" if cid in ("c0", "c1") else "user1"}
    roles = published_roles()
    assert {r["conversation_id"]: r["split"] for r in got} == roles
    info = json.loads((out / "dataset.json").read_text())
    assert info["dropped"] == {
        "dialogs_without_survey_user": 2,  # c5 (user2: no completed conversation), c8
        "dialogs_without_complete_turn": 2,  # c2, c6
        "users_without_dialog": 1,  # user3
        "users_with_few_dialogs": 2,  # user4 (1 dialog), user5 (none in the file)
        "identical_responses": 1,  # c4 turn 1
    }
    assert info["counts"]["comparisons"] == 9
    # c0's chosen "Hi A" is one text shared by its three comparisons
    assert len({r["chosen"] for r in by_dialog["c0"][:3]}) == 1
    assert PreferenceDataset(out).n_texts == 9 + 6  # 9 rejected + 6 distinct chosen


def test_survey_fields_make_the_users_table(tmp_path):
    import pyarrow.parquet as pq

    out = prepare_prism(write_prism(tmp_path / "prism"), tmp_path / "ds", CFG)
    users = pq.read_table(out / "users.parquet").to_pylist()
    roles = published_roles()
    assert users == [
        {
            "user_id": uid,
            "population": roles[cid].split("-")[0],
            "num_completed_conversations": n,
            "self_description": "me",
            "location_birth_country": "X",
            "age": None,  # NaN in the survey
        }
        for uid, cid, n in (("user0", "c0", "3"), ("user1", "c3", "2"))
    ]
    assert PreferenceDataset(out).summary()["user_attributes"] == [
        "population",
        "num_completed_conversations",
        "self_description",
        "location_birth_country",
        "age",
    ]


def test_explicit_files_and_byte_identical(tmp_path):
    root = write_prism(tmp_path / "prism")
    a = prepare_prism(root, tmp_path / "a", CFG)
    b = prepare_prism(
        None,
        tmp_path / "b",
        CFG,
        survey=root / "survey.jsonl",
        conversations=root / "conversations.jsonl",
    )
    assert folder_bytes(a) == folder_bytes(b)


def test_defaults_are_published():
    cfg = PRISMConfig()
    assert (cfg.seen_fraction, cfg.min_dialogs, cfg.train_fraction, cfg.seed) == (0.8, 5, 0.5, 123)


def test_bad_inputs(tmp_path):
    out = tmp_path / "ds"
    root = write_prism(tmp_path / "p1", conv_raw={3: '{"conversation_id": "c2", '})
    assert_fails_cleanly(
        lambda: prepare_prism(root, out, CFG),
        out,
        "conversations.jsonl",
        "line 3",
        "not valid JSON",
    )
    only_survey = tmp_path / "p2"
    only_survey.mkdir()
    (only_survey / "survey.jsonl").write_text("\n".join(survey_lines()))
    assert_fails_cleanly(
        lambda: prepare_prism(only_survey, out, CFG), out, "p2", "no conversations.jsonl"
    )
    convs = conversations()
    del convs[1]["conversation_history"][2]["turn"]
    root3 = tmp_path / "p3"
    write_prism(root3)
    write_jsonl(root3 / "conversations.jsonl", convs)
    assert_fails_cleanly(
        lambda: prepare_prism(root3, out, CFG),
        out,
        "conversations.jsonl",
        "line 2",
        "conversation_history[2] has no valid 'turn'",
    )


def test_cli_matches_api(tmp_path):
    from typer.testing import CliRunner

    from lore_rm.cli import app

    root = write_prism(tmp_path / "prism")
    res = CliRunner().invoke(
        app,
        [
            "prepare",
            "prism",
            str(root),
            "--out",
            str(tmp_path / "cli"),
            "--seen-fraction",
            "0.5",
            "--min-dialogs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert folder_bytes(tmp_path / "cli") == folder_bytes(prepare_prism(root, tmp_path / "a", CFG))
    res = CliRunner().invoke(
        app, ["prepare", "prism", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "nope: no such folder" in res.output
