"""Group and tail reports: the pure report over per-user rows, and a planted population in
which one group's preference differs, which the report must find."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from lore_rm.comparisons import Comparisons
from lore_rm.errors import DataError
from lore_rm.evaluate.groups import MISSING, cvar, group_report, user_tails
from lore_rm.evaluate.personal_rows import per_user_rows, personalisation_rows, shared_model
from lore_rm.fit.model import LowRankReward
from lore_rm.metrics import bootstrap_mean
from lore_rm.protocol import ProtocolSplit


def test_cvar_counts_the_boundary_user_fractionally():
    losses = np.array([0.1, 0.9, 0.5, 0.3, 0.7])
    assert cvar(losses, 0.4) == pytest.approx((0.9 + 0.7) / 2)  # 2 whole users
    assert cvar(losses, 0.3) == pytest.approx((0.9 + 0.5 * 0.7) / 1.5)  # 1.5 users
    assert cvar(losses, 0.1) == pytest.approx(0.9)  # less than one user: the worst
    assert cvar(losses, 0.99) == pytest.approx((0.9 + 0.7 + 0.5 + 0.3 + 0.95 * 0.1) / 4.95)


def test_tails_over_users():
    acc = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 0.9, 0.7, 0.5, 0.3, 0.1, math.nan])
    t = user_tails(acc, None, "personal", 0.1)
    assert t.users == 10 and t.mean == pytest.approx(0.55)
    assert t.p10 == pytest.approx(np.quantile(acc[:-1], 0.1))  # 0.19
    assert t.bottom_mean == pytest.approx(0.1)  # the one user at or below it
    assert t.cvar_loss == pytest.approx(0.9) and t.loss == "error rate"
    loss = np.linspace(0.1, 1.1, 11)
    t = user_tails(acc, loss, "personal", 0.2)
    assert t.loss == "log-loss" and t.cvar_loss == pytest.approx((1.0 + 0.9) / 2)


def rows_and_users():
    rows = {}
    users = {"user_id": [], "region": [], "age": []}
    for i in range(12):
        south = i >= 8
        rows[f"u{i:02d}"] = {
            "pooled": 0.55 if south else 0.80,
            "shared": 0.60 if south else 0.82,
            "personal": 0.78 + 0.01 * (i % 3) if south else 0.83,
            "population": "unseen" if i % 4 == 0 else "seen",
        }
        users["user_id"].append(f"u{i:02d}")
        users["region"].append("south" if south else "north")
        users["age"].append(None if i == 0 else ("young" if i % 2 else "old"))
    return rows, pa.table(users)


def test_group_report_rows_gain_and_worst():
    rows, users = rows_and_users()
    rep = group_report(rows, users, ["region", "age", "population"], n_boot=500)
    assert rep.users == 12 and rep.models == ["pooled", "shared", "personal"]
    south = next(r for r in rep.rows_of("region") if r.group == "south")
    north = next(r for r in rep.rows_of("region") if r.group == "north")
    assert south.users == 4 and north.users == 8
    assert south.accuracy["pooled"] == pytest.approx(0.55)
    assert south.accuracy["personal"] == pytest.approx(np.mean([0.80, 0.78, 0.79, 0.80]))
    diffs = torch.tensor(
        [rows[u]["personal"] - rows[u]["shared"] for u in sorted(rows)[8:]], dtype=torch.float64
    )
    expected = bootstrap_mean(diffs, n_boot=500)
    assert south.gain == expected  # the interval is metrics.bootstrap_mean's, over the group
    assert north.gain.mean == pytest.approx(0.01)
    assert rep.worst["region"] == {"pooled": "south", "shared": "south", "personal": "south"}
    assert south.worst_for == ("pooled", "shared", "personal") and north.worst_for == ()
    ages = [r.group for r in rep.rows_of("age")]
    assert ages == ["old", "young", MISSING]  # the user without a value is a group of its own
    assert [r.group for r in rep.rows_of("population")] == ["seen", "unseen"]
    assert rep.tails["pooled"].p10 == pytest.approx(0.55)
    d = rep.to_dict()
    assert d["worst"]["region"]["personal"] == "south" and len(d["groups"]) == 2 + 3 + 2
    # min_users: a group too small is never the worst
    rep = group_report(rows, users, ["region"], min_users=5, n_boot=100)
    assert rep.worst["region"]["pooled"] == "north"


def test_group_report_errors():
    rows, users = rows_and_users()
    with pytest.raises(DataError, match="no column 'religion' to group by; the users table has"):
        group_report(rows, users, ["religion"])
    with pytest.raises(DataError, match="no per-user rows"):
        group_report({}, users, ["region"])
    with pytest.raises(DataError, match="no users table"):
        group_report(rows, None, ["region"])


# ---- a planted population: the south's preference differs --------------------------------
D = 6
NORTH, SOUTH = torch.eye(D)[0] * 4.0, torch.eye(D)[1] * 4.0  # true reward directions


def planted(n_north=24, n_south=8, per_user=60, seed=0):
    """Every north user prefers along one direction, every south user along an orthogonal
    one; features are Gaussian, labels Bradley–Terry. Seen users train on ``per_user``
    comparisons and are tested on as many new ones; four unseen users per group."""
    g = torch.Generator().manual_seed(seed)

    def draw(ids, regions, n):
        xs, us = [], []
        for uid, region in zip(ids, regions, strict=True):
            x = torch.randn(n, D, generator=g)
            m = x @ (SOUTH if region == "south" else NORTH)
            first = torch.rand(n, generator=g) < torch.sigmoid(m)
            xs.append(torch.where(first[:, None], x, -x))
            us += [uid] * n
        return Comparisons.from_features(torch.cat(xs), us)

    seen = [f"s{i:02d}" for i in range(n_north + n_south)]
    seen_regions = ["north"] * n_north + ["south"] * n_south
    new = [f"n{i:02d}" for i in range(8)]
    new_regions = ["north"] * 4 + ["south"] * 4
    split = ProtocolSplit(
        seen_train=draw(seen, seen_regions, per_user),
        seen_test=draw(seen, seen_regions, per_user),
        unseen_fewshot=draw(new, new_regions, 30),
        unseen_test=draw(new, new_regions, per_user),
    )
    users = pa.table(
        {
            "user_id": seen + new,
            "region": seen_regions + new_regions,
            "age": ["young" if i % 2 else "old" for i in range(len(seen) + len(new))],
        }
    )
    return split, users


def test_planted_group_is_found():
    split, users = planted()
    rows = personalisation_rows(split, rank=2, weight_decay=1e-3, calibrate=False)
    assert set(rows) == set(users.column("user_id").to_pylist())
    assert {r["population"] for r in rows.values()} == {"seen", "unseen"}
    rep = group_report(rows, users, ["region", "age"], n_boot=1000)
    by = {r.group: r for r in rep.rows_of("region")}
    south, north = by["south"], by["north"]
    # one pooled reward (and the basis at the mean weights) follows the majority: the south
    # is their worst group, far below the north
    assert rep.worst["region"]["pooled"] == "south" and rep.worst["region"]["shared"] == "south"
    assert south.accuracy["pooled"] < north.accuracy["pooled"] - 0.15
    assert south.accuracy["shared"] < north.accuracy["shared"] - 0.15
    # personal weights serve the south: a large gain whose interval excludes zero, while the
    # north gains little
    assert south.accuracy["personal"] > south.accuracy["shared"] + 0.15
    assert south.gain.lower > 0.1 and south.gain.excludes_zero()
    assert north.gain.mean < south.gain.mean - 0.1
    # age is unrelated to preference: no age group is far behind
    ages = rep.rows_of("age")
    assert abs(ages[0].accuracy["personal"] - ages[1].accuracy["personal"]) < 0.1
    # the tails see the south's users at the bottom under the pooled model
    assert rep.tails["pooled"].p10 < rep.tails["personal"].p10
    assert rep.tails["pooled"].cvar_loss > rep.tails["personal"].cvar_loss
    assert rep.tails["personal"].loss == "log-loss"


def test_adapter_rows_match_the_model():
    split, _ = planted(n_north=6, n_south=4, per_user=30)
    model = LowRankReward(rank=2, weight_decay=1e-3, calibrate=False).fit(split.seen_train)
    pooled = LowRankReward(rank=1, weight_decay=1e-3, calibrate=False).fit(split.seen_train)
    rows = per_user_rows(model, split.seen_test, pooled)
    personal = model.accuracy_per_user(split.seen_test)
    assert {u: r["personal"] for u, r in rows.items()} == pytest.approx(personal)
    assert {u: r["pooled"] for u, r in rows.items()} == pytest.approx(
        pooled.accuracy_per_user(split.seen_test)
    )
    shared = shared_model(model, split.seen_test.user_ids)
    w = shared.weights_for(list(split.seen_test.user_ids))[0]
    assert torch.allclose(w, model.population_weights_.expand_as(w))
    assert {u: r["shared"] for u, r in rows.items()} == pytest.approx(
        shared.accuracy_per_user(split.seen_test)
    )
    assert all(r["comparisons"] == 30 for r in rows.values())
