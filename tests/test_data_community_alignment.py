"""``lore prepare community-alignment``: three pairs per turn, preferred continuations, the
language filter, a split by (conversation, turn) that never leaks, both release layouts."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
from data_helpers import assert_fails_cleanly, folder_bytes, rows_with_texts, write_parquet

from lore_rm.data import CommunityAlignmentConfig, PreferenceDataset, prepare_community_alignment

TURNS = ("first", "second", "third", "fourth")
DEMOGRAPHIC_COLUMNS = (
    "annotator_age",
    "annotator_gender",
    "annotator_education_level",
    "annotator_political",
    "annotator_ethnicity",
    "annotator_country",
)
COLUMNS = (
    ["conversation_id", "annotator_id", "assigned_lang"]
    + [
        f"{t}_turn_{part}"
        for t in TURNS
        for part in (
            "prompt",
            "response_a",
            "response_b",
            "response_c",
            "response_d",
            "preferred_response",
            "feedback",
        )
    ]
    + list(DEMOGRAPHIC_COLUMNS)
    + ["is_pregenerated_first_prompt", "in_balanced_subset", "in_balanced_subset_10"]
)


def ca_row(cid, annotator, lang, turns, *, age="25-34", country="US", balanced=True):
    """One conversation in the release's layout; ``turns``: (prompt, 4 responses, letter)
    per annotated turn, None for an empty turn; unused turns are empty (None)."""
    row = dict.fromkeys(COLUMNS)
    row.update(
        conversation_id=cid,
        annotator_id=annotator,
        assigned_lang=lang,
        annotator_age=age,
        annotator_gender="female",
        annotator_education_level="Bachelor",
        annotator_political="Moderate",
        annotator_ethnicity="Other",
        annotator_country=country,
        is_pregenerated_first_prompt=True,
        in_balanced_subset=balanced,
        in_balanced_subset_10=False,
    )
    for name, turn in zip(TURNS, turns, strict=False):
        if turn is None:
            continue
        prompt, responses, letter = turn
        row[f"{name}_turn_prompt"] = prompt
        for x, text in zip("abcd", responses, strict=True):
            row[f"{name}_turn_response_{x}"] = text
        row[f"{name}_turn_preferred_response"] = letter and f"response_{letter}"
        row[f"{name}_turn_feedback"] = "I liked it"
    return row


def four(tag):
    return [f"{tag} answer {x}" for x in "ABCD"]


def hand_rows():
    return [
        ca_row(
            "c1",
            "ann1",
            "en",
            [
                ("Hi there", four("t1"), "b"),
                ("And then?", four("t2"), "d"),
                ("Bye", four("t3"), "a"),
            ],
        ),
        ca_row("c2", "ann1", "en", [("Solo question", four("s"), "c")]),
        ca_row("c3", "ann2", "fr", [("Bonjour", four("fr"), "a")], country="FR"),
        ca_row(
            "c4",
            "ann2",
            "en",
            [
                ("Q1", four("q1"), "a"),
                ("Q2", ["same", "same", "other", None], "a"),  # one identical, one missing
                ("Q3", four("q3"), None),  # not annotated: the conversation stops here
                ("Q4", four("q4"), "b"),
            ],
            country="FR",
        ),
        ca_row("c5", "ann3", "en", [("R1", four("r1"), "a"), None, ("R3", four("r3"), "c")]),
    ]


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:  # pandas' to_csv: empty cells for missing values, True / False
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    return path


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


ALL = CommunityAlignmentConfig(lang="all", unseen_fraction=0.0)
EN = CommunityAlignmentConfig(unseen_fraction=0.0)


def test_three_pairs_per_turn_continuing_from_preferred(tmp_path):
    src = write_csv(tmp_path / "full_community_alignment.csv", hand_rows())
    out = prepare_community_alignment(src, tmp_path / "ds", EN)
    got = {}
    for r in rows_with_texts(out):
        got.setdefault((r["conversation_id"], r["turn"]), []).append(r)
        assert r["prompt_id"] == f"{r['conversation_id']}:{r['turn']}"
        assert r["chosen_conv"][:-1] == r["rejected_conv"][:-1]
    # c1: three annotated turns, each the preferred answer against the three others
    for turn, (tag, pref) in enumerate([("t1", "B"), ("t2", "D"), ("t3", "A")], 1):
        rows = got[("c1", turn)]
        assert len(rows) == 3
        assert {r["chosen_conv"][-1]["content"] for r in rows} == {f"{tag} answer {pref}"}
        assert sorted(r["rejected_conv"][-1]["content"] for r in rows) == [
            f"{tag} answer {x}" for x in "ABCD" if x != pref
        ]
        assert {r["chosen_response"] for r in rows} == {pref.lower()}
        assert len({r["chosen"] for r in rows}) == 1  # one text, stored once
    # the prompt of turn t is the conversation so far, continued with the PREFERRED answers
    assert got[("c1", 3)][0]["chosen_conv"][:-1] == [
        U("Hi there"),
        A("t1 answer B"),
        U("And then?"),
        A("t2 answer D"),
        U("Bye"),
    ]
    # c4: turn 2 has one identical response and one missing; turn 3 has no choice, so the
    # conversation stops there (turn 4 would continue from a response nobody chose)
    assert len(got[("c4", 1)]) == 3
    assert [r["rejected_conv"][-1]["content"] for r in got[("c4", 2)]] == ["other"]
    assert ("c4", 3) not in got and ("c4", 4) not in got
    # c5: turn 2 is empty, so turn 3 has a gap in its context and is left out
    assert ("c5", 3) not in got and len(got[("c5", 1)]) == 3
    assert ("c3", 1) not in got  # French
    info = json.loads((out / "dataset.json").read_text())
    assert info["dropped"] == {
        "rows_other_language": 1,
        "rows_outside_balanced_subset": 0,
        "turns_incomplete": 1,
        "turns_after_gap": 2,  # c4 turn 4, c5 turn 3
        "identical_responses": 1,
        "users_below_min_pairs": 0,
    }
    assert info["counts"]["comparisons"] == 9 + 3 + 3 + 1 + 3
    assert "hub" not in info  # a local file pins nothing


def test_language_filter_and_users_table(tmp_path):
    src = write_csv(tmp_path / "ca.csv", hand_rows())
    en = prepare_community_alignment(src, tmp_path / "en", EN)
    every = prepare_community_alignment(src, tmp_path / "all", ALL)
    fr = prepare_community_alignment(
        src, tmp_path / "fr", CommunityAlignmentConfig(lang="FR", unseen_fraction=0.0)
    )
    convs = {p: {r["conversation_id"] for r in rows_with_texts(p)} for p in (en, every, fr)}
    assert convs[en] == {"c1", "c2", "c4", "c5"}
    assert convs[every] == convs[en] | {"c3"}
    assert convs[fr] == {"c3"}
    users = pq.read_table(en / "users.parquet").to_pylist()
    assert [u["user_id"] for u in users] == ["ann1", "ann2", "ann3"]
    assert users[1] == {
        "user_id": "ann2",
        "population": "seen",
        "lang": "en",  # ann2's English rows only: the French one was filtered out
        "age": "25-34",
        "gender": "female",
        "education_level": "Bachelor",
        "political": "Moderate",
        "ethnicity": "Other",
        "country": "FR",
    }
    summary = PreferenceDataset(en).summary()
    assert summary["user_attributes"] == [
        "population",
        "lang",
        "age",
        "gender",
        "education_level",
        "political",
        "ethnicity",
        "country",
    ]


def population(n_users=12, n_convs=6, seed=0):
    """A larger hand-made release: every annotator has ``n_convs`` conversations of 1-4
    turns; some rows in the balanced subset, one annotator with few turns."""
    import random

    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        for c in range(n_convs if u else 1):
            turns = [
                (f"u{u} c{c} t{t} prompt", four(f"u{u}c{c}t{t}"), rng.choice("abcd"))
                for t in range(rng.randint(1, 4) if u else 1)  # ann00: one turn, 3 pairs
            ]
            rows.append(ca_row(f"conv-{u}-{c}", f"ann{u:02d}", "en", turns, balanced=(c % 2 == 0)))
    return rows


@pytest.mark.parametrize("unit", ["turn", "conversation"])
def test_split_never_leaks_a_turn(tmp_path, unit):
    """The leak test: no (conversation, turn) -- nor, by conversation, a conversation -- is
    in two roles, so a turn's three pairs (same prompt, same chosen text) stay together."""
    release = tmp_path / "release"
    write_parquet(release / "data" / "train-00000-of-00001.parquet", population())
    cfg = CommunityAlignmentConfig(unseen_fraction=0.25, test_fraction=0.5, split_unit=unit)
    rows = rows_with_texts(prepare_community_alignment(release, tmp_path / "ds", cfg))
    role_of_turn: dict[tuple, set] = {}
    role_of_conv: dict[str, set] = {}
    for r in rows:
        role_of_turn.setdefault((r["conversation_id"], r["turn"]), set()).add(r["split"])
        role_of_conv.setdefault(r["conversation_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in role_of_turn.values())
    if unit == "conversation":
        assert all(len(s) == 1 for s in role_of_conv.values())
    else:  # by turn, a conversation's turns do land on both sides
        assert any(len(s) == 2 for s in role_of_conv.values())
    # no text (a prompt with one response) is both trained on and tested
    train_texts = {r["chosen"] for r in rows if r["split"] in ("seen-train", "unseen-fewshot")}
    train_texts |= {r["rejected"] for r in rows if r["split"] in ("seen-train", "unseen-fewshot")}
    test_texts = {r["chosen"] for r in rows if r["split"].endswith("test")}
    test_texts |= {r["rejected"] for r in rows if r["split"].endswith("test")}
    assert not train_texts & test_texts
    roles = {r["split"] for r in rows}
    assert roles == {"seen-train", "seen-test", "unseen-fewshot", "unseen-test"}
    by_user: dict[str, set] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], set()).add(r["split"].split("-")[0])
    assert all(len(s) == 1 for s in by_user.values())  # a user is seen or unseen, not both


def test_min_pairs_balanced_subset_and_seed(tmp_path):
    rows = population()
    src = write_parquet(tmp_path / "ca.parquet", rows)
    out = prepare_community_alignment(src, tmp_path / "a", CommunityAlignmentConfig(min_pairs=10))
    info = json.loads((out / "dataset.json").read_text())
    assert info["dropped"]["users_below_min_pairs"] == 1  # ann00: one conversation
    assert "ann00" not in {r["user_id"] for r in rows_with_texts(out)}
    bal = prepare_community_alignment(
        src, tmp_path / "b", CommunityAlignmentConfig(balanced_subset="in_balanced_subset")
    )
    kept = {r["conversation_id"] for r in rows_with_texts(bal)}
    assert kept and all(int(c.rsplit("-", 1)[1]) % 2 == 0 for c in kept)
    assert json.loads((bal / "dataset.json").read_text())["dropped"][
        "rows_outside_balanced_subset"
    ] == sum(not r["in_balanced_subset"] for r in rows)
    again = prepare_community_alignment(src, tmp_path / "c", CommunityAlignmentConfig(min_pairs=10))
    assert folder_bytes(again) == folder_bytes(out)
    other = prepare_community_alignment(
        src, tmp_path / "d", CommunityAlignmentConfig(min_pairs=10, seed=1)
    )
    assert folder_bytes(other)["comparisons.parquet"] != folder_bytes(out)["comparisons.parquet"]


def test_csv_and_parquet_releases_agree(tmp_path):
    """v1.0's folder of two CSV files (the full one is read) and the later parquet train
    split give the same comparisons, texts and users."""
    rows = hand_rows()
    v10 = tmp_path / "v1.0"
    write_csv(v10 / "data" / "full_community_alignment.csv", rows)
    write_csv(v10 / "data" / "filtered_community_alignment.csv", rows[:1])
    later = tmp_path / "later"
    write_parquet(later / "data" / "train-00000-of-00001.parquet", rows)
    a = folder_bytes(prepare_community_alignment(v10, tmp_path / "a", EN))
    b = folder_bytes(prepare_community_alignment(later, tmp_path / "b", EN))
    for name in ("comparisons.parquet", "texts.parquet", "users.parquet"):
        assert a[name] == b[name], name
    filtered = prepare_community_alignment(
        v10 / "data" / "filtered_community_alignment.csv", tmp_path / "f", EN
    )
    assert {r["conversation_id"] for r in rows_with_texts(filtered)} == {"c1"}
    two = tmp_path / "two"
    write_csv(two / "x.csv", rows)
    write_csv(two / "y.csv", rows)
    assert_fails_cleanly(
        lambda: prepare_community_alignment(two, tmp_path / "x", EN),
        tmp_path / "x",
        "several CSV files (x.csv, y.csv)",
    )


def test_hub_name_is_fetched_and_pinned(tmp_path, monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        snap = tmp_path / "cache" / "snapshots" / commit
        write_parquet(snap / "data" / "train-00000-of-00001.parquet", hand_rows())
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    cfg = CommunityAlignmentConfig(unseen_fraction=0.0, revision="v1.1")
    out = prepare_community_alignment("facebook/community-alignment-dataset", tmp_path / "ds", cfg)
    assert calls[0][0] == "facebook/community-alignment-dataset"
    assert calls[0][1]["repo_type"] == "dataset" and calls[0][1]["revision"] == "v1.1"
    info = json.loads((out / "dataset.json").read_text())
    assert info["hub"] == {
        "repo": "facebook/community-alignment-dataset",
        "requested": "v1.1",
        "commit": commit,
    }
    assert info["source"] == "facebook/community-alignment-dataset"
    assert info["counts"]["comparisons"] == 19

    def offline(repo_id, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert_fails_cleanly(
        lambda: prepare_community_alignment(HUB, tmp_path / "x", cfg),
        tmp_path / "x",
        f"could not fetch {HUB!r}",
    )


HUB = "facebook/community-alignment-dataset"


def test_bad_inputs(tmp_path):
    out = tmp_path / "ds"
    rows = hand_rows()
    rows[1]["first_turn_preferred_response"] = "response_e"
    src = write_csv(tmp_path / "bad.csv", rows)
    assert_fails_cleanly(
        lambda: prepare_community_alignment(src, out, EN),
        out,
        "bad.csv: row 2",
        "'first_turn_preferred_response' is 'response_e'",
    )
    rows = hand_rows()
    rows[3]["conversation_id"] = "c1"
    src = write_parquet(tmp_path / "dup.parquet", rows)
    assert_fails_cleanly(
        lambda: prepare_community_alignment(src, out, EN),
        out,
        "dup.parquet: row 4",
        "conversation_id 'c1' appears twice (first at dup.parquet row 1)",
    )
    rows = [{k: v for k, v in r.items() if k != "annotator_id"} for r in hand_rows()]
    src = write_parquet(tmp_path / "nocol.parquet", rows)
    assert_fails_cleanly(
        lambda: prepare_community_alignment(src, out, EN),
        out,
        "nocol.parquet: missing column(s) 'annotator_id'",
    )
    src = write_csv(tmp_path / "ok.csv", hand_rows())
    assert_fails_cleanly(
        lambda: prepare_community_alignment(
            src, out, CommunityAlignmentConfig(lang="de", unseen_fraction=0.0)
        ),
        out,
        "no Community Alignment comparisons",
        "lang 'de'",
    )
    with pytest.raises(Exception, match="split_unit"):
        prepare_community_alignment(src, out, CommunityAlignmentConfig(split_unit="pair"))


def test_cli_matches_api(tmp_path):
    from typer.testing import CliRunner

    from lore_rm.cli import app

    src = write_parquet(tmp_path / "ca.parquet", population())
    res = CliRunner().invoke(
        app,
        [
            "prepare",
            "community-alignment",
            str(src),
            "--out",
            str(tmp_path / "cli"),
            "--min-pairs",
            "5",
            "--balanced-subset",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = CommunityAlignmentConfig(min_pairs=5, balanced_subset="in_balanced_subset")
    api = prepare_community_alignment(src, tmp_path / "api", cfg)
    assert folder_bytes(tmp_path / "cli") == folder_bytes(api)
    res = CliRunner().invoke(app, ["data", "info", str(api)])
    assert res.exit_code == 0 and "age" in res.output and "country" in res.output
