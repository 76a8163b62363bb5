"""`lore prepare generic`'s split stays put: adding users (or reordering rows) never moves a
user already in the data; users with too few comparisons are reported."""

from __future__ import annotations

import json
import random

import pytest
from data_helpers import rows_with_texts, write_jsonl
from typer.testing import CliRunner

from lore_rm.cli import app
from lore_rm.data import PreferenceDataset, prepare_generic
from lore_rm.data.generic import GenericConfig


def population(users: range, seed: int = 0) -> list[dict]:
    """Users answering 3 to 14 of 30 prompts, some twice on one prompt."""
    rng = random.Random(seed)
    rows = []
    for u in users:
        r = random.Random(f"{seed}-{u}")
        for p in r.sample(range(30), r.randint(3, 14)):
            for k in range(1 + (r.random() < 0.2)):
                rows.append(
                    {
                        "prompt": f"question {p}",
                        "chosen": f"answer {p} take {k} liked by {u % 3}",
                        "rejected": f"answer {p} plain {k}",
                        "user_id": f"user{u:03d}",
                    }
                )
    rng.shuffle(rows)
    return rows


def roles(path) -> dict[tuple, str]:
    """(user, prompt text, chosen text, rejected text) -> role, for every comparison."""
    out = {}
    for r in rows_with_texts(path):
        key = (
            r["user_id"],
            json.dumps(r["chosen_conv"][:-1]),
            r["chosen_conv"][-1]["content"],
            r["rejected_conv"][-1]["content"],
        )
        assert key not in out
        out[key] = r["split"]
    return out


@pytest.mark.parametrize("caps", [{}, {"max_train": 4, "max_fewshot": 3}])
def test_adding_users_moves_no_existing_user(tmp_path, caps):
    cfg = GenericConfig(seed=7, **caps)
    old_rows = population(range(60))
    new_rows = population(range(60, 65), seed=1)
    before = roles(
        prepare_generic(write_jsonl(tmp_path / "a.jsonl", old_rows), tmp_path / "a", cfg)
    )
    # the new users' rows first, then the old rows in another order, in two files
    random.Random(3).shuffle(old_rows)
    files = [
        write_jsonl(tmp_path / "new.jsonl", new_rows),
        write_jsonl(tmp_path / "b.jsonl", old_rows),
    ]
    after = roles(prepare_generic(files, tmp_path / "b", cfg))
    old_users = {k[0] for k in before}
    kept = {k: v for k, v in after.items() if k[0] in old_users}
    assert kept == before  # every existing comparison: same role, none dropped or added by caps
    assert {k[0] for k in after} - old_users == {f"user{u:03d}" for u in range(60, 65)}
    # every role is used, and a user's roles are all seen or all unseen
    assert set(before.values()) == {"seen-train", "seen-test", "unseen-fewshot", "unseen-test"}
    side = {}
    for (user, *_), role in before.items():
        assert side.setdefault(user, role.split("-")[0]) == role.split("-")[0]
    # the share of unseen users is about the fraction asked for
    assert 6 <= sum(s == "unseen" for s in side.values()) <= 20
    # another seed is another split
    other = roles(prepare_generic(files, tmp_path / "c", GenericConfig(seed=8, **caps)))
    assert {k: v for k, v in other.items() if k in before} != before


def test_each_user_keeps_a_train_prompt_and_the_test_share(tmp_path):
    rows = population(range(40))
    out = prepare_generic(write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "a")
    prompts: dict[str, dict[str, set]] = {}
    for (user, prompt, _, _), role in roles(out).items():
        prompts.setdefault(user, {}).setdefault(role.split("-")[1], set()).add(prompt)
    for user, sides in prompts.items():
        n = sum(len(p) for p in sides.values())
        assert len(sides.get("test", ())) == n // 2, user  # floor(0.5 * prompts)
        assert sides.get("train") or sides.get("fewshot")


def test_users_with_few_comparisons_are_warned_about_and_reported(tmp_path):
    rows = population(range(10))
    rows += [{"prompt": "q", "chosen": "a", "rejected": "b", "user_id": "solo"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.warns(UserWarning, match=r"1 user with fewer than 2 comparisons .*'solo'"):
        out = prepare_generic(src, tmp_path / "ds")
    info = PreferenceDataset(out).summary()
    assert info["users_below_min"] == 1 and info["users_below_min_first"] == ["solo"]
    assert info["users_without_test"] == 1 and info["users_without_test_first"] == ["solo"]

    runner = CliRunner()
    res = runner.invoke(
        app,
        ["prepare", "generic", str(src), "--out", str(tmp_path / "d2"), "--min-comparisons", "3"],
        terminal_width=200,
    )
    assert res.exit_code == 0, res.output
    assert "warning: 1 user with fewer than 3 comparisons" in res.stderr
    res = runner.invoke(app, ["data", "info", str(tmp_path / "d2")], terminal_width=200)
    assert "1 user with fewer than 3 comparisons: solo" in res.stdout
    assert "1 user with no test comparison" in res.stdout
