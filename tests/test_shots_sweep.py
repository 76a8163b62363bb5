"""The shots sweep never reports the same draw twice, and says when it cannot mean anything."""

from __future__ import annotations

import pytest
import torch

from lore_rm.evaluate.protocols import plan_shots, run_protocol, shots_sweep


def test_values_past_every_pool_collapse_to_one_row(easy_population):
    few = easy_population.split.unseen_fewshot  # 30 comparisons per unseen user
    values, notes = plan_shots(few, [5, 10, 30, 40, 50])
    assert values == [5, 10, 30]
    assert "shots 30, 40, 50" in notes[0] and "reported once as 30 shots" in notes[0]
    assert plan_shots(few, [10, 5, 10]) == ([5, 10], [])


def test_users_with_smaller_pools_are_counted(easy_population):
    few = easy_population.split.unseen_fewshot
    rows = (few.user_index == 0).nonzero()[:, 0]
    keep = torch.ones(few.n, dtype=torch.bool)
    keep[rows[5:]] = False  # user 0 keeps 5 of its 30 comparisons
    values, notes = plan_shots(few.subset(keep.nonzero()[:, 0]), [2, 10])
    assert values == [2, 10]
    assert notes == [
        "1 of 60 unseen users have fewer than 10 few-shot comparisons and use all they have "
        "(the shots_capped_users column)"
    ]


def test_sweep_rows_say_how_many_users_were_capped(easy_population, easy_rank3):
    split = easy_population.split
    with pytest.warns(UserWarning, match="reported once as 30 shots"):
        rows = shots_sweep(easy_rank3.copy(), split, [2, 30, 60], trials=1)
    assert [r["shots"] for r in rows] == [2, 30]
    assert all(r["shots_capped_users"] == 0 for r in rows)


def test_rank_1_has_nothing_to_personalise(easy_population):
    result = run_protocol(easy_population.split, [1], shots=[2, 5], trials=1)
    assert result.shot_rows == []
    assert "shots sweep skipped: at rank 1" in result.notes[0]
