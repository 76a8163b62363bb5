"""The cross-validated margin scale (issue #9): its estimator, where the fit learns it, what it
multiplies, and what it leaves alone."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lore_rm import LowRankReward, simulate_population
from lore_rm.errors import DataError
from lore_rm.evaluate import sample_shots
from lore_rm.fit.calibration import fit_margin_scale, scaled_log_loss
from lore_rm.fit.posterior import probit_proba
from lore_rm.fit.solvers import bt_margins
from lore_rm.metrics import expected_calibration_error
from lore_rm.serve.export import reward_head

SMALL_GRID = {"weight_decay_grid": (0.003, 0.03)}


def _planted_rows(scale: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out rows whose true margin is N(scale * m, (scale * s)^2), oriented chosen-first."""
    g = torch.Generator().manual_seed(seed)
    m = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    s = 0.2 + 1.3 * torch.rand(n, generator=g, dtype=torch.float64)
    true = scale * (m + s * torch.randn(n, generator=g, dtype=torch.float64))
    chose_first = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(true)
    sign = chose_first.double() * 2 - 1
    return m * sign, s


@settings(max_examples=8, deadline=None)
@given(scale=st.floats(0.5, 2.0), seed=st.integers(0, 10_000))
def test_the_estimator_recovers_a_planted_scale(scale, seed):
    m, s = _planted_rows(scale, 40_000, seed)
    found = fit_margin_scale(m, s)
    assert found == pytest.approx(scale, rel=0.1)
    # it is the minimum of the held-out log-loss it describes
    for other in (found * 0.9, found * 1.1):
        assert scaled_log_loss(found, m, s) <= scaled_log_loss(other, m, s)


def test_nothing_to_fit_is_scale_one():
    assert fit_margin_scale(torch.zeros(0), torch.zeros(0)) == 1.0
    assert fit_margin_scale(torch.zeros(5), torch.ones(5)) == 1.0
    # separable held-out comparisons (all right, by a wide margin): the likelihood alone would
    # grow the scale without end; the prior on log a keeps it near 1 when they are few
    few_right = fit_margin_scale(torch.full((50,), 3.0), torch.zeros(50))
    assert 1.0 < few_right < 3.0
    # no std (rank 1): the scale is a plain temperature
    m, _ = _planted_rows(1.5, 40_000, 0)
    assert fit_margin_scale(m, torch.zeros_like(m)) > 1.0


@pytest.fixture(scope="module")
def population():
    return simulate_population(
        d=16, true_rank=3, n_seen=100, n_unseen=40, train_per_user=40, n_prompts=600, seed=3
    )


@pytest.fixture(scope="module")
def pair(population):
    split = population.split
    on = LowRankReward(rank=3, **SMALL_GRID).fit(split.seen_train)
    off = LowRankReward(rank=3, calibrate=False, **SMALL_GRID).fit(split.seen_train)
    return on, off


def test_the_fit_takes_the_chosen_cells_scale_and_changes_no_weight(pair, population):
    on, off = pair
    sel = on.history_["selection"]
    chosen = next(r for r in sel["rows"] if r["chosen"])
    assert on.margin_scale_ == chosen["margin_scale"] != 1.0
    assert on.history_["calibration"]["source"].endswith("users held out")
    assert off.margin_scale_ == 1.0 and off.history_["calibration"]["why"] == "calibrate is off"
    # the same fit: only the outputs are scaled
    assert torch.equal(on.basis_, off.basis_) and torch.equal(on.user_weights_, off.user_weights_)
    assert on.reward_scale == pytest.approx(on.margin_scale_ * on.scale_)
    e = torch.randn(5, on.d_)
    users = on.users_[:5]
    torch.testing.assert_close(on.reward(e, users), on.margin_scale_ * off.reward(e, users))
    test = population.split.seen_test
    torch.testing.assert_close(on.margins(test), on.margin_scale_ * off.margins(test))
    assert on.score(test) == off.score(test)
    # new users' weights are fitted in the training likelihood's units: the same either way
    few = population.split.unseen_fewshot
    a, b = on.copy().personalize(few), off.copy().personalize(few)
    assert torch.equal(a.user_weights_, b.user_weights_)
    post_a, post_b = a.weights_posterior(few), b.weights_posterior(few)
    torch.testing.assert_close(post_a.covariance, post_b.covariance)
    unseen = population.split.unseen_test
    mean, std = b.margin_std(unseen, post_b)
    k = on.margin_scale_
    torch.testing.assert_close(
        a.predict_proba(unseen, posterior=post_a), probit_proba(k * mean, k * std)
    )
    _, std_a = a.reward(
        e[:1].expand(2, -1), [few.user_ids[0]] * 2, return_std=True, posterior=post_a
    )
    _, std_b = b.reward(
        e[:1].expand(2, -1), [few.user_ids[0]] * 2, return_std=True, posterior=post_b
    )
    torch.testing.assert_close(std_a, k * std_b)


def test_without_a_user_holdout_search_the_scale_is_one(population):
    train = population.split.seen_train
    fixed = LowRankReward(rank=3, weight_decay=0.01).fit(train)
    assert (
        fixed.margin_scale_ == 1.0
        and "no cross-validated search" in (fixed.history_["calibration"]["why"])
    )
    comparisons = LowRankReward(rank=3, cv_holdout="comparisons", **SMALL_GRID).fit(train)
    assert comparisons.margin_scale_ == 1.0
    assert "held out comparisons" in comparisons.history_["calibration"]["why"]
    assert "margin_scale" not in comparisons.history_["selection"]["rows"][0]
    paper = LowRankReward(rank=3, recipe="paper", n_iter=20).fit(train)
    assert paper.margin_scale_ == 1.0


def test_save_load_keeps_the_scale_and_old_folders_read_as_one(pair, tmp_path):
    on, _ = pair
    on.save_pretrained(tmp_path / "m")
    back = LowRankReward.from_pretrained(tmp_path / "m")
    assert back.margin_scale_ == on.margin_scale_
    e = torch.randn(3, on.d_)
    torch.testing.assert_close(back.reward(e, on.users_[:3]), on.reward(e, on.users_[:3]))
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"margin_scale = {on.margin_scale_:g}" in card and "users the search held out" in card
    cfg_path = tmp_path / "m" / "config.json"
    record = json.loads(cfg_path.read_text())
    assert record["format_version"] == 5 and record["margin_scale"] == on.margin_scale_
    del record["margin_scale"]
    record["format_version"] = 3
    cfg_path.write_text(json.dumps(record))
    assert LowRankReward.from_pretrained(tmp_path / "m").margin_scale_ == 1.0


def test_the_exported_head_carries_the_scale(pair):
    on, off = pair
    user = on.users_[0]
    torch.testing.assert_close(
        reward_head(on, user, basis=False), on.margin_scale_ * reward_head(off, user, basis=False)
    )
    with pytest.raises(DataError, match="margin_scale"):
        LowRankReward.from_arrays(on.basis_, on.user_weights_, on.users_, margin_scale=0.0)


def test_new_users_intervals_cover_the_true_margins_on_the_demo_population():
    """The acceptance measurement in small: on the demo's planted population, 5 comparisons per
    new user, the calibrated 90% intervals cover 85-95% of the true margins and the posterior
    probabilities have ECE <= 0.03; uncalibrated they cover less (bench/posterior_calibration.py
    runs the whole table)."""
    pop = simulate_population(seed=0)
    split = pop.split
    on = LowRankReward(rank=4).fit(split.seen_train)
    few = sample_shots(split.unseen_fewshot, 5, torch.Generator().manual_seed(0))
    test = split.unseen_test
    truth = bt_margins(
        test.project(pop.true_basis), pop.true_weights["unseen"], test.user_index, 1.0
    ).double()
    covered = {}
    for scale in (on.margin_scale_, 1.0):
        model = on.copy()
        model.margin_scale_ = scale
        model.personalize(few)
        post = model.weights_posterior(few)
        mean, std = model.margin_std(test, post)
        covered[scale] = float(((truth - mean).abs() <= 1.645 * std).double().mean())
        if scale != 1.0:
            ece = expected_calibration_error(model.predict_proba(test, posterior=post))
            assert ece <= 0.03
    assert 1.1 < on.margin_scale_ < 1.4
    assert 0.85 <= covered[on.margin_scale_] <= 0.95
    assert covered[1.0] < covered[on.margin_scale_] - 0.05
    assert not math.isnan(covered[1.0])
