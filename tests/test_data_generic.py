"""``lore prepare generic``: formats, orientation, splits, validation errors, the CLI."""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import (
    assert_fails_cleanly,
    folder_bytes,
    rows_with_texts,
    write_jsonl,
    write_parquet,
)
from typer.testing import CliRunner

from lore_rm.cli import app
from lore_rm.data import GenericConfig, PreferenceDataset, prepare_generic
from lore_rm.errors import DataError


def _rows(n_users=6, n_prompts=4):
    rows = []
    for u in range(n_users):
        for p in range(n_prompts):
            rows.append(
                {
                    "prompt": f"question {p}",
                    "chosen": f"good answer {p} for {u % 2}",
                    "rejected": f"bad answer {p}",
                    "user_id": f"user{u}",
                }
            )
    return rows


def test_orientation_dedupe_and_split_column(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "yes", "rejected": "no", "user_id": 1, "role": "seen-train"},
        {"prompt": "q1", "chosen": "no", "rejected": "maybe", "user_id": 2, "role": "seen-test"},
        {"prompt": "q2", "chosen": "a", "rejected": "b", "user_id": 3, "role": "unseen-fewshot"},
        {"prompt": "q1", "chosen": "yes", "rejected": "maybe", "user_id": 3, "role": "unseen-test"},
    ]
    out = prepare_generic(
        [write_jsonl(tmp_path / "in.jsonl", rows)],
        tmp_path / "ds",
        GenericConfig(split_column="role"),
    )
    got = rows_with_texts(out)
    assert [r["split"] for r in got] == [r["role"] for r in rows]
    assert [r["user_id"] for r in got] == ["1", "2", "3", "3"]
    for r, src in zip(got, rows, strict=True):
        assert r["chosen_conv"] == [
            {"role": "user", "content": src["prompt"]},
            {"role": "assistant", "content": src["chosen"]},
        ]
        assert r["rejected_conv"][-1]["content"] == src["rejected"]
        assert r["source_file"] == "in.jsonl"
    assert [r["source_row"] for r in got] == [1, 2, 3, 4]
    # q1 has three distinct responses, q2 two: five unique texts shared by four comparisons
    assert PreferenceDataset(out).n_texts == 5
    assert got[0]["chosen"] == got[3]["chosen"] and got[1]["rejected"] == got[3]["rejected"]
    assert got[0]["prompt_id"] == got[1]["prompt_id"] != got[2]["prompt_id"]


def test_random_split_invariants(tmp_path):
    rows = _rows(n_users=10, n_prompts=5)
    rows.append({**rows[0], "rejected": "another bad answer"})  # a second comparison on a prompt
    cfg = GenericConfig(unseen_fraction=0.3, test_fraction=0.4, seed=3)
    out = prepare_generic([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "ds", cfg)
    got = rows_with_texts(out)
    assert len(got) == len(rows)
    by_user = defaultdict(list)
    for r in got:
        by_user[r["user_id"]].append(r)
    unseen = {u for u, rs in by_user.items() if rs[0]["split"].startswith("unseen")}
    assert 0 < len(unseen) < 10  # each user by a stable draw from its id: about 10 * 0.3
    for user, rs in by_user.items():
        side = {r["prompt_id"]: r["split"] for r in rs}
        assert all(side[r["prompt_id"]] == r["split"] for r in rs)  # a prompt stays on one side
        test = [p for p, s in side.items() if s.endswith("test")]
        assert len(test) == 2  # floor(5 prompts * 0.4)
        assert {s.split("-")[0] for s in side.values()} == {"unseen" if user in unseen else "seen"}
    other = prepare_generic([tmp_path / "in.jsonl"], tmp_path / "ds2", GenericConfig(seed=4))
    assert (
        PreferenceDataset(other).comparisons["split"] != PreferenceDataset(out).comparisons["split"]
    )


def test_caps(tmp_path):
    cfg = GenericConfig(unseen_fraction=0.5, test_fraction=0.25, max_train=2, max_fewshot=1)
    out = prepare_generic([write_jsonl(tmp_path / "in.jsonl", _rows(4, 8))], tmp_path / "ds", cfg)
    s = PreferenceDataset(out).summary()["roles"]
    assert s["seen-train"]["per_user_max"] == 2 and s["seen-train"]["comparisons"] == 4
    assert s["unseen-fewshot"]["comparisons"] == 2
    assert s["seen-test"]["comparisons"] == 4 and s["unseen-test"]["comparisons"] == 4
    info = json.loads((out / "dataset.json").read_text())
    assert info["dropped"] == {"over_max_train": 8, "over_max_fewshot": 10}


def test_formats_agree(tmp_path):
    """jsonl, gzipped jsonl, parquet (messages as list<struct>), csv (messages as JSON) and
    TRL's implicit-prompt form all give the same comparisons."""
    plain = _rows(3, 2)
    convo = [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": r["prompt"]},
            ],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
            "user_id": r["user_id"],
        }
        for r in plain
    ]
    implicit = [
        {
            "chosen": c["prompt"] + c["chosen"],
            "rejected": c["prompt"] + c["rejected"],
            "user_id": c["user_id"],
        }
        for c in convo
    ]
    gz = tmp_path / "convo.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in convo))
    csv_path = tmp_path / "convo.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["prompt", "chosen", "rejected", "user_id"])
        w.writeheader()
        for r in convo:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    inputs = {
        "jsonl": write_jsonl(tmp_path / "convo.jsonl", convo),
        "gz": gz,
        "parquet": write_parquet(tmp_path / "convo.parquet", convo),
        "csv": csv_path,
        "implicit": write_jsonl(tmp_path / "implicit.jsonl", implicit),
    }
    results = {}
    for name, path in inputs.items():
        got = rows_with_texts(prepare_generic([path], tmp_path / name))
        results[name] = [
            (r["user_id"], r["split"], r["chosen_conv"], r["rejected_conv"]) for r in got
        ]
    first = results["jsonl"]
    assert first[0][2][0] == {"role": "system", "content": "Be brief."}
    assert all(v == first for v in results.values())
    # plain strings (user-only prompts, other texts): the same users seen and unseen
    got = rows_with_texts(
        prepare_generic([write_jsonl(tmp_path / "p.jsonl", plain)], tmp_path / "plain")
    )
    side = [(r["user_id"], r["split"].split("-")[0]) for r in got]
    assert side == [(u, s.split("-")[0]) for u, s, _, _ in first]


def test_byte_identical_reruns(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _rows())
    a = folder_bytes(prepare_generic([src], tmp_path / "a", GenericConfig(seed=5)))
    b = folder_bytes(prepare_generic([src], tmp_path / "b", GenericConfig(seed=5)))
    assert a == b


def _bad(tmp_path, name, rows, raw=None):
    return write_jsonl(tmp_path / name, rows, raw)


GOOD = {"prompt": "q", "chosen": "a", "rejected": "b", "user_id": "u"}


@pytest.mark.parametrize(
    "rows, raw, fragments",
    [
        ([GOOD, {**GOOD, "chosen": "  "}], None, ["line 2", "empty text in 'chosen'"]),
        ([GOOD, GOOD, {**GOOD, "rejected": "a"}], None, ["line 3", "identical"]),
        (
            [
                {**GOOD, "prompt": [{"role": "user", "content": "q"}]},
                {**GOOD, "prompt": [{"role": "bot", "content": "x"}]},
            ],
            None,
            ["line 2", "malformed messages", "role 'bot'"],
        ),
        ([{**GOOD, "prompt": [{"role": "user"}]}], None, ["line 1", "no string 'content'"]),
        (
            [GOOD, {**GOOD, "prompt": [{"role": "user", "content": "q"}]}],
            None,
            ["line 2", "mixed types in column 'prompt'", "line 1"],
        ),
        ([GOOD, {**GOOD, "user_id": 7}], None, ["line 2", "mixed types in column 'user_id'"]),
        ([GOOD, GOOD, GOOD], {2: '{"prompt": "q", "chosen": '}, ["line 2", "not valid JSON"]),
        ([GOOD, {**GOOD, "user_id": None}], None, ["line 2", "missing value in 'user_id'"]),
        (
            [GOOD, {k: v for k, v in GOOD.items() if k != "rejected"}],
            None,
            ["line 2", "missing field 'rejected'"],
        ),
        (
            [{k: v for k, v in GOOD.items() if k != "prompt"}],
            None,
            ["no column 'prompt' (--prompt-column;", "the columns are: 'chosen', 'rejected'"],
        ),
        (
            [
                {
                    "chosen": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ],
                    "rejected": [
                        {"role": "user", "content": "other"},
                        {"role": "assistant", "content": "b"},
                    ],
                    "user_id": "u",
                }
            ],
            None,
            ["line 1", "continue the prompt differently"],
        ),
        (
            [{**GOOD, "chosen": [{"role": "user", "content": "more?"}]}],
            None,
            ["line 1", "must be the assistant's response"],
        ),
    ],
)
def test_bad_jsonl(tmp_path, rows, raw, fragments):
    src = _bad(tmp_path, "bad.jsonl", rows, raw)
    out = tmp_path / "out" / "ds"
    assert_fails_cleanly(lambda: prepare_generic([src], out), out, "bad.jsonl", *fragments)


def test_bad_files(tmp_path):
    out = tmp_path / "ds"
    good = write_parquet(tmp_path / "good.parquet", [GOOD] * 3)
    no_user = write_parquet(
        tmp_path / "nouser.parquet", [{k: v for k, v in GOOD.items() if k != "user_id"}]
    )
    assert_fails_cleanly(
        lambda: prepare_generic([good, no_user], out),
        out,
        "nouser.parquet",
        "no column 'user_id' (--user-column); the columns are: 'prompt', 'chosen'",
    )
    truncated = tmp_path / "trunc.parquet"
    truncated.write_bytes(good.read_bytes()[:-20])
    assert_fails_cleanly(
        lambda: prepare_generic([truncated], out),
        out,
        "trunc.parquet",
        "not a readable parquet file",
    )
    assert_fails_cleanly(
        lambda: prepare_generic([tmp_path / "missing.jsonl"], out),
        out,
        "missing.jsonl",
        "no such file",
    )
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("prompt,chosen,rejected,user_id\nq,a,b,u\nq,a,b,u,extra\n")
    assert_fails_cleanly(
        lambda: prepare_generic([bad_csv], out),
        out,
        "bad.csv",
        "row 2",
        "5 fields but the header has 4",
    )
    empty_cell = tmp_path / "empty.csv"
    empty_cell.write_text("prompt,chosen,rejected,user_id\nq,a,b,u\n,a,b,u\n")
    assert_fails_cleanly(
        lambda: prepare_generic([empty_cell], out),
        out,
        "empty.csv",
        "row 2",
        "empty text in 'prompt'",
    )
    bad_role = write_jsonl(tmp_path / "role.jsonl", [{**GOOD, "r": "train"}])
    assert_fails_cleanly(
        lambda: prepare_generic([bad_role], out, GenericConfig(split_column="r")),
        out,
        "role.jsonl",
        "line 1",
        "'r' is 'train'",
    )


def test_cli_prepare_and_info(tmp_path):
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"q": "x", "good": "a", "bad": "b", "who": w} for w in ("ann", "bob", "ann")],
    )
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "prepare",
            "generic",
            str(src),
            "--out",
            str(tmp_path / "ds"),
            "--prompt-column",
            "q",
            "--chosen-column",
            "good",
            "--rejected-column",
            "bad",
            "--user-column",
            "who",
            "--unseen-fraction",
            "0",
            "--test-fraction",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "seen-train" in res.output
    res = runner.invoke(app, ["data", "info", str(tmp_path / "ds"), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["users"] == 2 and s["texts"] == 2 and s["comparisons"] == 3
    assert s["roles"]["seen-train"] == {
        "comparisons": 3,
        "users": 2,
        "per_user_min": 1,
        "per_user_median": 1.5,
        "per_user_max": 2,
    }
    res = runner.invoke(app, ["prepare", "generic", str(src), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2
    assert "no column 'prompt'" in res.output
    assert not (tmp_path / "bad").exists()


def test_wide_parquet_columns_are_read_by_name(tmp_path):
    table = pa.table(
        {
            "extra": [1, 2],
            "user_id": ["a", "b"],
            "rejected": ["n", "m"],
            "chosen": ["y", "z"],
            "prompt": ["p", "p"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    got = rows_with_texts(
        prepare_generic([tmp_path / "t.parquet"], tmp_path / "ds", GenericConfig(unseen_fraction=0))
    )
    assert [r["chosen_conv"][-1]["content"] for r in got] == ["y", "z"]
    assert np.array_equal([r["user_id"] for r in got], ["a", "b"])


def _cut_gzip(path, text: str) -> int:
    """Write the first half of ``text`` gzipped (a truncated file); the complete lines in it."""
    whole = gzip.compress(text.encode())
    cut = whole[: len(whole) // 2]
    path.write_bytes(cut)
    return zlib.decompressobj(31).decompress(cut).count(b"\n")


def test_truncated_gzip_names_the_last_line_read(tmp_path):
    """A gzip file cut short: the error names the last complete line, even when the cut falls
    far beyond the first chunk read (the lines decoded before it are not lost)."""
    rows = [
        {**GOOD, "chosen": f"answer {i} " + "x" * (i % 97), "user_id": f"u{i % 5}"}
        for i in range(20000)
    ]
    jsonl = tmp_path / "cut.jsonl.gz"
    lines = _cut_gzip(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    assert 1000 < lines < len(rows)
    out = tmp_path / "ds"
    assert_fails_cleanly(
        lambda: prepare_generic([jsonl], out),
        out,
        f"cut.jsonl.gz: truncated gzip file after line {lines} (",
    )
    csv_gz = tmp_path / "cut.csv.gz"
    header = "prompt,chosen,rejected,user_id\n"
    lines = _cut_gzip(csv_gz, header + "".join(",".join(r.values()) + "\n" for r in rows))
    assert_fails_cleanly(
        lambda: prepare_generic([csv_gz], out),
        out,
        f"cut.csv.gz: truncated gzip file after row {lines - 1} (",  # the header is row 0
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("option", ["prompt", "chosen", "rejected", "user", "prompt-id", "split"])
def test_cli_missing_named_column(tmp_path, fmt, option):
    """Every column named by an option that the file lacks is one line naming the file, the
    column, the option and the columns there are (not a per-row error such as 'is None')."""
    rows = [{**GOOD, "pid": "p1", "role": "seen-train"}, {**GOOD, "pid": "p2", "role": "seen-test"}]
    path = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        (write_jsonl if fmt == "jsonl" else write_parquet)(path, rows)
    args = ["prepare", "generic", str(path), "--out", str(tmp_path / "ds")]
    args += ["--prompt-id-column", "pid", "--split-column", "role", f"--{option}-column", "nosuch"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    message = " ".join(res.output.split())  # rich may wrap a long line
    assert f"in.{fmt}: no column 'nosuch' (--{option}-column" in message
    assert "the columns are: 'prompt', 'chosen', 'rejected', 'user_id', 'pid', 'role'" in message
    assert "Traceback" not in res.output and not (tmp_path / "ds").exists()


def test_json_column_missing_from_some_rows(tmp_path):
    """In JSON, a column some rows have is a per-row error at the first row lacking it (even
    the first row), and a column no row has is an error about the file."""
    out = tmp_path / "ds"
    no_user = {k: v for k, v in GOOD.items() if k != "user_id"}
    for rows, fragments in (
        ([no_user, GOOD, GOOD], ["bad.jsonl: line 1: missing field 'user_id'"]),
        ([GOOD, GOOD, no_user, no_user], ["bad.jsonl: line 3: missing field 'user_id'"]),
        ([no_user, no_user], ["bad.jsonl: no column 'user_id' (--user-column)"]),
    ):
        src = write_jsonl(tmp_path / "bad.jsonl", rows)
        assert_fails_cleanly(lambda s=src: prepare_generic([s], out), out, *fragments)
    src = write_jsonl(tmp_path / "role.jsonl", [{**GOOD, "role": "seen-train"}, GOOD])
    assert_fails_cleanly(
        lambda: prepare_generic([src], out, GenericConfig(split_column="nosuch")),
        out,
        "role.jsonl: no column 'nosuch' (--split-column); the columns are: 'prompt', 'chosen', "
        "'rejected', 'user_id', 'role'",
    )


def test_cli_skip_invalid(tmp_path):
    """--skip-invalid leaves out every bad row and reports it (counts by reason, the first
    rows, all of them in rejects.jsonl, the counts in dataset.json); without it the first bad
    row is still a one-line error."""
    rows, bad = [], {}
    for i in range(40):
        row = {**GOOD, "prompt": f"q{i % 4}", "chosen": f"a{i}", "user_id": f"u{i % 5}"}
        line = i + 1
        if i % 5 == 2 and len(bad) < 7:  # seven empty responses
            row["rejected" if i % 2 else "chosen"] = " "
            bad[line] = ("empty_text", "rejected" if i % 2 else "chosen")
        rows.append(row)
    rows[30]["rejected"] = rows[30]["chosen"]
    bad[31] = ("identical", None)
    rows[33]["user_id"] = None
    bad[34] = ("missing_value", "user_id")
    rows[35]["chosen"] = 5
    bad[36] = ("wrong_type", "chosen")
    src = write_jsonl(tmp_path / "in.jsonl", rows, {39: '{"prompt": "q", "chosen'})
    bad[39] = ("not_json", None)
    first = min(bad)
    runner = CliRunner()
    base = ["prepare", "generic", str(src), "--unseen-fraction", "0", "--test-fraction", "0"]

    res = runner.invoke(app, [*base, "--out", str(tmp_path / "strict")])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0, res.output  # one line
    assert f"in.jsonl: line {first}: empty text in 'chosen'" in res.output
    assert not (tmp_path / "strict").exists()

    out = tmp_path / "ds"
    res = runner.invoke(app, [*base, "--out", str(out), "--skip-invalid"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert (
        "Skipped 11 invalid rows: empty_text 7, identical 1, missing_value 1, not_json 1, "
        f"wrong_type 1; all of them are in {out / 'rejects.jsonl'}" in text
    )
    shown = sorted(bad)[:5]
    for line in shown:
        assert f"in.jsonl:{line} {bad[line][0]}: " in text
    assert "... and 6 more" in text
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [("in.jsonl", n) for n in sorted(bad)]
    for r in rejects:
        assert (r["reason"], r["field"]) == bad[r["line"]]
        if r["reason"] == "not_json":
            assert r["row"] == '{"prompt": "q", "chosen'
        else:
            assert r["row"] == rows[r["line"] - 1]
    assert rejects[0]["message"] == f"empty text in {bad[first][1]!r}"
    info = json.loads((out / "dataset.json").read_text())
    assert info["parameters"]["skip_invalid"] is True
    assert info["dropped"] == {
        "over_max_train": 0,
        "over_max_fewshot": 0,
        "invalid_empty_text": 7,
        "invalid_identical": 1,
        "invalid_missing_value": 1,
        "invalid_not_json": 1,
        "invalid_wrong_type": 1,
    }
    got = rows_with_texts(out)
    assert [r["source_row"] for r in got] == [n for n in range(1, 41) if n not in bad]
    assert all(r["chosen_conv"][-1]["content"] == rows[r["source_row"] - 1]["chosen"] for r in got)


def test_skip_invalid_python(tmp_path):
    """skip_invalid=True from Python; a skipped row decides no column's type; a file with no
    valid row is still an error; nothing skipped gives an empty rejects file."""
    odd_first = [{**GOOD, "user_id": 1}, GOOD, {**GOOD, "chosen": "c"}, {**GOOD, "user_id": 2}]
    src = write_jsonl(tmp_path / "in.jsonl", odd_first)
    out = prepare_generic([src], tmp_path / "ds", skip_invalid=True)
    # row 1 (an integer id) is valid on its own, so it decides: the string ids are dropped
    assert [r["source_row"] for r in rows_with_texts(out)] == [1, 4]
    src = write_jsonl(
        tmp_path / "odd.jsonl", [{**GOOD, "chosen": ""}, GOOD, {**GOOD, "user_id": 3}]
    )
    out = prepare_generic([src], tmp_path / "ds2", skip_invalid=True)
    # row 1 is bad for another reason and decides nothing: the string id of row 2 does
    assert [r["source_row"] for r in rows_with_texts(out)] == [2]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(1, "empty_text"), (3, "mixed_types")]
    clean = prepare_generic(
        [write_jsonl(tmp_path / "ok.jsonl", [GOOD])], tmp_path / "ds3", skip_invalid=True
    )
    assert (clean / "rejects.jsonl").read_bytes() == b""
    none_valid = write_jsonl(tmp_path / "none.jsonl", [{**GOOD, "rejected": "a"}] * 2)
    assert_fails_cleanly(
        lambda: prepare_generic([none_valid], tmp_path / "ds4", skip_invalid=True),
        tmp_path / "ds4",
        "none.jsonl: no valid rows (2 invalid rows skipped)",
    )


def test_user_attributes_make_the_users_table(tmp_path):
    """--user-attributes FILE: one row per user, kept as users.parquet (users of the data
    only; a user the file does not list gets nulls)."""
    rows = [
        {"prompt": f"p{i}", "chosen": "yes", "rejected": "no", "user_id": f"u{i % 4}"}
        for i in range(16)
    ]
    src = tmp_path / "prefs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    attrs = tmp_path / "users.csv"
    attrs.write_text("user_id,age,country\nu0,18-24,UK\nu1,65+,US\nu2,,US\nghost,1,X\n")
    cfg = GenericConfig(unseen_fraction=0.5)
    out = prepare_generic([src], tmp_path / "ds", cfg, user_attributes=attrs)
    users = pq.read_table(out / "users.parquet").to_pylist()
    roles = {r["user_id"]: r["split"] for r in PreferenceDataset(out).comparisons.to_pylist()}
    assert [u["user_id"] for u in users] == ["u0", "u1", "u2", "u3"]
    for u in users:
        assert u["population"] == roles[u["user_id"]].split("-")[0]
    assert [(u["age"], u["country"]) for u in users] == [
        ("18-24", "UK"),
        ("65+", "US"),
        (None, "US"),
        (None, None),
    ]
    res = CliRunner().invoke(
        app,
        [
            "prepare",
            "generic",
            str(src),
            "--out",
            str(tmp_path / "cli"),
            "--unseen-fraction",
            "0.5",
            "--user-attributes",
            str(attrs),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "users table (users.parquet): population, age, country" in res.output
    assert folder_bytes(tmp_path / "cli") == folder_bytes(out)
    dup = tmp_path / "dup.csv"
    dup.write_text("user_id,age\nu0,1\nu0,2\n")
    with pytest.raises(DataError, match=r"dup.csv: row 2: user 'u0' is listed twice"):
        prepare_generic([src], tmp_path / "x", cfg, user_attributes=dup)
