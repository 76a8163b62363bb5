"""Model selection, the informed start, and the diagnostics of a fit."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from lore_rm import Comparisons, FitConfig, LoreError, LowRankReward, simulate_population
from lore_rm.errors import ConvergenceWarning, NoSignalWarning
from lore_rm.fit.config import FALLBACK_PRIOR
from lore_rm.fit.posterior import linear_std, logit_hessian
from lore_rm.fit.prior import isotropic_prior
from lore_rm.fit.selection import (
    EDGE_STEPS,
    LOOSE_TOL,
    PATH_BACK,
    REFINE_MARGIN,
    SEARCH_TOL,
    _fold_scores,
    _new_user_scores,
    choose_cell,
    held_out_users,
    may_change_choice,
    user_folds,
)
from lore_rm.fit.solvers import feature_scale, fit_user_weights, ridge_path
from lore_rm.fit.start import initial_point

SMALL_GRID = {"rank_grid": (1, 2, 3), "weight_decay_grid": (0.01, 0.1), "cv_folds": 3}


@pytest.fixture(scope="module")
def rank2_population():
    return simulate_population(
        d=16, true_rank=2, n_seen=80, n_unseen=20, train_per_user=40, n_prompts=400, seed=3
    )


def test_auto_picks_the_planted_rank(rank2_population):
    split = rank2_population.split
    model = LowRankReward(rank="auto", **SMALL_GRID).fit(split.seen_train)
    assert model.rank_ == 2
    sel = model.history_["selection"]
    assert sel["holdout"] == "users"  # the default: folds hold out whole users
    assert sel["rank"] == 2 and any(r["chosen"] for r in sel["rows"])
    tried = {r["weight_decay"] for r in sel["rows"]}
    assert model.config_.weight_decay in tried
    # rank 1 (pooled) is clearly worse in cross-validation than the chosen rank
    pooled = min(r["cv_loss"] for r in sel["rows"] if r["rank"] == 1)
    chosen = next(r for r in sel["rows"] if r["chosen"])
    assert chosen["cv_loss"] < pooled - 0.02
    assert model.history_["no_signal"] == []
    # loose, then refined: the choice falls on a refined cell, every cell within reach of the
    # chosen band was refined, and the cells left loose are far from it
    refined = [r for r in sel["rows"] if r["tol"] == SEARCH_TOL]
    loose = [r for r in sel["rows"] if r["tol"] == LOOSE_TOL]
    assert len(refined) + len(loose) == len(sel["rows"]) and sel["refined"] == len(refined)
    assert chosen in refined and loose  # something was left loose on this grid
    assert not any(may_change_choice(r, refined, REFINE_MARGIN, True) for r in loose)


def test_the_rank_grid_stops_at_the_first_rank_that_does_not_improve(rank2_population):
    grid = {**SMALL_GRID, "rank_grid": (1, 2, 3, 4, 6)}
    model = LowRankReward(rank="auto", **grid).fit(rank2_population.split.seen_train)
    assert model.rank_ == 2
    assert {r["rank"] for r in model.history_["selection"]["rows"]} == {1, 2, 3}


def _row(rank, decay, loss, se, weights="simplex"):
    return {
        "rank": rank,
        "weight_decay": decay,
        "weights": weights,
        "cv_loss": loss,
        "cv_loss_se": se,
    }


def test_a_loose_cell_is_refined_only_when_it_could_change_the_choice():
    refined = [_row(1, 0.1, 0.60, 0.01), _row(2, 0.1, 0.55, 0.01)]  # rank 2 chosen (band 0.56)
    assert choose_cell(refined, True)[0] is refined[1]
    # simpler than the chosen cell: only by entering the band
    assert may_change_choice(_row(2, 1.0, 0.565, 0.01), refined, 0.005, True)
    assert not may_change_choice(_row(2, 1.0, 0.57, 0.01), refined, 0.005, True)
    # more complex: only by becoming the best with a band that leaves the chosen cell out
    assert may_change_choice(_row(3, 0.1, 0.54, 0.001), refined, 0.005, True)
    assert not may_change_choice(_row(3, 0.1, 0.54, 0.02), refined, 0.005, True)
    assert not may_change_choice(_row(3, 0.1, 0.556, 0.0), refined, 0.005, True)
    # the minimum rule: anything that may beat the best
    assert may_change_choice(_row(3, 0.1, 0.554, 0.0), refined, 0.005, False)
    assert not may_change_choice(_row(1, 1.0, 0.556, 0.0), refined, 0.005, False)
    assert may_change_choice(_row(3, 0.1, 9.0, 0.0), [], 0.005, True)  # nothing refined yet


def test_kept_fold_sums_give_the_same_search_as_recomputing_them(rank2_population, monkeypatch):
    """Every rank's start reads its fold's per-user feature sums; kept between ranks (where
    small) they give the very search that recomputing them gives."""
    import lore_rm.fit.selection as selection
    import lore_rm.fit.start as start

    calls = []
    real = start.user_feature_sums
    monkeypatch.setattr(
        selection, "user_feature_sums", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    split = rank2_population.split
    kept = LowRankReward(rank="auto", seed=1, **SMALL_GRID).fit(split.seen_train)
    assert len(calls) == SMALL_GRID["cv_folds"]  # once per fold, whatever the ranks walked
    monkeypatch.setattr(selection, "FOLD_SUMS_BYTES", 0)
    again = LowRankReward(rank="auto", seed=1, **SMALL_GRID).fit(split.seen_train)
    assert len(calls) == SMALL_GRID["cv_folds"]  # not kept: the start computes its own
    rows = [
        (r["rank"], r["weight_decay"], r["cv_loss"]) for r in kept.history_["selection"]["rows"]
    ]
    assert len({r[0] for r in rows}) >= 2
    assert rows == [
        (r["rank"], r["weight_decay"], r["cv_loss"]) for r in again.history_["selection"]["rows"]
    ]
    torch.testing.assert_close(kept.basis_, again.basis_, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["spectral", "svd"])
def test_a_kept_spectrum_gives_every_rank_the_same_start_from_one_decomposition(
    rank2_population, monkeypatch, kind
):
    data = rank2_population.split.seen_train
    sigma = feature_scale(data, True)
    fresh = [initial_point(data, sigma, k, kind) for k in (2, 3, 4)]
    calls = []
    real = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda *a, **k: calls.append(1) or real(*a, **k))
    spectra: dict = {}
    kept = [initial_point(data, sigma, k, kind, spectra=spectra) for k in (2, 3, 4)]
    assert len(calls) == 1 and len(spectra) == 1
    for (b0, l0), (b1, l1) in zip(fresh, kept, strict=True):
        torch.testing.assert_close(b1, b0, rtol=0, atol=0)
        torch.testing.assert_close(l1, l0, rtol=0, atol=0)


def test_a_rank_sweep_walks_rank_one_once_and_fits_what_separate_searches_fit(rank2_population):
    """Every given rank's search walks rank 1 for its pooled fallback; inside
    shared_searches() the later searches take that walk (and its refinements) from the
    first, and every model is the one a search of its own fits."""
    from lore_rm.fit.search_memo import shared_searches

    data = rank2_population.split.seen_train
    grid = {k: v for k, v in SMALL_GRID.items() if k != "rank_grid"}

    def fit(rank):
        return LowRankReward(rank=rank, seed=1, **grid).fit(data)

    alone = {k: fit(k) for k in (1, 2, 3)}
    with shared_searches():
        swept = {k: fit(k) for k in (1, 2, 3)}
    for k in (1, 2, 3):
        a, s = alone[k].history_["selection"], swept[k].history_["selection"]
        assert a["rows"] == s["rows"]
        torch.testing.assert_close(swept[k].basis_, alone[k].basis_, rtol=0, atol=0)
        assert s["n_fits"] + s["reused_fits"] == a["n_fits"]
    assert swept[1].history_["selection"]["reused_fits"] == 0  # the first walks it
    for k in (2, 3):
        assert swept[k].history_["selection"]["reused_fits"] > 0
        assert any(r["rank"] == 1 for r in swept[k].history_["selection"]["rows"])
    # different data: nothing is reused
    other = rank2_population.split.seen_test
    with shared_searches():
        fit(2)
        again = LowRankReward(rank=2, seed=1, **grid).fit(other)
    assert again.history_["selection"]["reused_fits"] == 0


def test_a_later_rank_walks_its_ridges_from_near_the_last_ranks_best():
    pop = simulate_population(
        d=64, true_rank=2, n_seen=40, n_unseen=20, train_per_user=10, n_prompts=400, seed=5
    )
    model = LowRankReward(rank_grid=(1, 2, 3), cv_folds=3).fit(pop.split.seen_train)
    grid = model.config_.weight_decay_grid
    rows = model.history_["selection"]["rows"]
    best1 = min((r for r in rows if r["rank"] == 1), key=lambda r: r["cv_loss"])["weight_decay"]
    start = grid[max(grid.index(best1) - PATH_BACK, 0)]
    assert start > grid[0]  # the strong end wins here: the later ranks skip the weak ridges
    upper = [r for r in rows if r["rank"] == 2 and r["path_start"] == start]
    assert upper and min(r["weight_decay"] for r in upper) == start
    chosen = next(r for r in rows if r["chosen"])
    assert model.rank_ == 2 and chosen["path_start"] == start  # planted rank 2 wins here
    assert model.config_.ridge_path_start == start
    assert model.history_["ridge_path"][0] == start  # the refit walks the path the cell did
    cell = {
        k: getattr(model.config_, k)
        for k in ("weight_decay", "weights", "ridge_path_start", "weight_decay_grid")
    }
    explicit = LowRankReward(rank=model.rank_, personalization=model.personalization_, **cell).fit(
        pop.split.seen_train
    )
    assert torch.equal(explicit.basis_, model.basis_)


def test_explicit_values_skip_the_search(rank2_population):
    split = rank2_population.split
    model = LowRankReward(rank=2, weight_decay=0.01).fit(split.seen_train)
    assert model.rank_ == 2 and model.history_ == {**model.history_, "validated": False}
    assert "selection" not in model.history_


def test_the_ridge_path_goes_past_the_grid_when_its_strongest_value_wins():
    pop = simulate_population(
        d=64, true_rank=2, n_seen=40, n_unseen=10, train_per_user=10, n_prompts=200, seed=5
    )
    grid = (1e-4, 1e-3)  # far too weak for 10 comparisons per user in 64 dimensions
    model = LowRankReward(rank=2, weight_decay_grid=grid, cv_folds=3, personalization=1.0).fit(
        pop.split.seen_train
    )
    tried = [r["weight_decay"] for r in model.history_["selection"]["rows"]]
    assert tried[:2] == list(grid)
    assert 2 < len(tried) <= 2 + EDGE_STEPS
    assert tried[2] == 0.01  # the grid's own ratio
    assert model.config_.weight_decay > max(grid)


def test_an_explicit_ridge_is_reached_by_the_path_the_search_scored(rank2_population):
    data = rank2_population.split.seen_train
    auto = LowRankReward(rank=2, **SMALL_GRID).fit(data)
    chosen = auto.config_.weight_decay
    grid = SMALL_GRID["weight_decay_grid"]
    assert auto.history_["ridge_path"] == [w for w in grid if w < chosen] + [chosen]
    explicit = LowRankReward(rank=2, weight_decay=chosen, weight_decay_grid=grid).fit(data)
    assert torch.equal(explicit.basis_, auto.basis_)
    assert torch.equal(explicit.user_weights_, auto.user_weights_)
    cfg = FitConfig.for_recipe("default", ridge_path=False)
    assert ridge_path(0.5, cfg) == [0.5]


def test_folds_are_stratified_by_user(rank2_population):
    data = rank2_population.split.seen_train
    fold = user_folds(data, 5, torch.Generator().manual_seed(0))
    per_user_fold = torch.zeros(data.n_users, 5, dtype=torch.long)
    per_user_fold.index_put_((data.user_index, fold), torch.ones_like(fold), accumulate=True)
    assert bool((per_user_fold > 0).all())  # every user (40 comparisons) in every fold
    assert int(per_user_fold.max() - per_user_fold.min()) <= 1  # dealt evenly


def test_user_holdout_folds_hold_out_whole_users(rank2_population):
    data = rank2_population.split.seen_train
    fold = held_out_users(data, 5, torch.Generator().manual_seed(0))
    per_user = torch.zeros(data.n_users, 5, dtype=torch.long)
    per_user.index_put_((data.user_index, fold), torch.ones_like(fold), accumulate=True)
    assert bool(((per_user > 0).sum(1) == 1).all())  # each user in exactly one fold
    users_per_fold = (per_user > 0).sum(0)
    assert int(users_per_fold.max() - users_per_fold.min()) <= 1


def test_new_user_scores_equal_fitting_each_held_out_split_on_its_own(rank2_population):
    """The batched score (every held-out user and inner split at once) equals fitting every
    (user, inner split) alone: weights on the user's other splits, margin on this one, and
    the margin's std under that fit's Laplace posterior (isotropic fallback prior)."""
    data = rank2_population.split.seen_train.compact(centre=True)
    cfg = FitConfig.for_recipe("default")
    sigma = feature_scale(data, True)
    gen = torch.Generator().manual_seed(1)
    inner = user_folds(data, 3, gen)
    fold = held_out_users(data, 3, gen)
    held_out = torch.stack([fold == f for f in range(3)])
    basis = torch.randn(3, data.d, 2, generator=gen)
    logits = torch.randn(3, data.n_users, 2, generator=gen)
    scores = _new_user_scores(data, sigma, basis, logits, held_out, inner, cfg)
    margins, std = scores.own, scores.std
    loss, acc = _fold_scores(data, margins[None].expand(3, -1), held_out)
    want, want_std = torch.zeros(data.n), torch.zeros(data.n, dtype=torch.float64)
    want_shared = torch.zeros(data.n)
    for f in range(3):
        raw = basis[f] / sigma[:, None]
        trained = ~torch.isin(torch.arange(data.n_users), data.user_index[held_out[f]])
        population = logits[f][trained].softmax(-1).mean(0)
        prior = isotropic_prior(population, FALLBACK_PRIOR).precision
        for user in data.user_index[held_out[f]].unique().tolist():
            for part in range(3):
                mine = data.user_index == user
                fit_rows = (mine & (inner != part)).nonzero()[:, 0]
                one = data.subset(fit_rows).with_user_ids([data.user_ids[user]])
                w = fit_user_weights(one, raw, cfg.scale, cfg, population)
                h = logit_hessian(one.project(raw), w, one.user_index, cfg.scale, prior)
                cov = torch.linalg.inv(h)
                scored = (mine & (inner == part)).nonzero()[:, 0]
                z = data.subset(scored).project(raw)
                want[scored] = cfg.scale * (z @ w[0])
                want_shared[scored] = cfg.scale * (z @ population)
                n = len(scored)
                want_std[scored] = linear_std(z, w.expand(n, -1), cov.expand(n, -1, -1), cfg.scale)
    expected = [float(torch.nn.functional.softplus(-want[held_out[f]]).mean()) for f in range(3)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-4)
    torch.testing.assert_close(margins.float(), want, atol=1e-4, rtol=0)  # Newton: both exact
    torch.testing.assert_close(std, want_std, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(scores.shared.float(), want_shared, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.at(0.5), 0.5 * (scores.own + scores.shared))
    assert bool((std > 0).all())
    assert bool(((acc > 0.3) & (acc < 1)).all())


def test_fewer_users_than_folds_fall_back_to_holding_out_comparisons():
    pop = simulate_population(
        d=8, true_rank=2, n_seen=3, n_unseen=2, train_per_user=30, n_prompts=100, seed=2
    )
    model = LowRankReward(rank=2, weight_decay_grid=(0.01, 0.1), cv_folds=4).fit(
        pop.split.seen_train
    )
    sel = model.history_["selection"]
    assert sel["holdout"] == "comparisons"
    assert any("fewer than the 4 folds" in n for n in sel["notes"])


def test_comparison_holdout_is_still_available(rank2_population):
    split = rank2_population.split
    model = LowRankReward(rank="auto", cv_holdout="comparisons", **SMALL_GRID).fit(split.seen_train)
    assert model.history_["selection"]["holdout"] == "comparisons"
    assert model.rank_ == 2


@pytest.mark.parametrize("kind", ["spectral", "svd"])
def test_informed_start_is_deterministic_and_uses_no_random_draw(rank2_population, kind):
    data = rank2_population.split.seen_train.compact()
    sigma = feature_scale(data, True)
    a = initial_point(data, sigma, 3, kind, torch.Generator().manual_seed(0))
    b = initial_point(data, sigma, 3, kind, torch.Generator().manual_seed(99))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (data.d, 3) and torch.linalg.matrix_rank(a[0]) == 3
    # the first direction of the spectral start is the pooled direction of the data
    if kind == "spectral":
        pooled = data.feature_rows(0, data.n).sum(0) / sigma
        cos = torch.nn.functional.cosine_similarity(a[0].mean(1), pooled, dim=0)
        assert cos > 0.99


def test_informed_start_with_fewer_users_than_columns():
    x = torch.randn(6, 8)
    data = Comparisons.from_features(x, ["a"] * 6)
    basis, logits = initial_point(data, torch.ones(8), 4, "spectral")
    assert basis.shape == (8, 4) and torch.linalg.matrix_rank(basis) == 4


def test_pure_noise_labels_warn(rank2_population):
    split = rank2_population.split
    data = split.seen_train
    flip = torch.rand(data.n, generator=torch.Generator().manual_seed(1)) < 0.5
    noisy = Comparisons.from_pairs(
        data.table,
        torch.where(flip, data.rejected, data.chosen),
        torch.where(flip, data.chosen, data.rejected),
        data.user_index,
        user_ids=data.user_ids,
    )
    with pytest.warns(NoSignalWarning, match="learned nothing") as caught:
        model = LowRankReward(rank="auto", **SMALL_GRID).fit(noisy)
    assert model.history_["no_signal"]
    # the warning names the cell it is about
    cell = f"at rank {model.rank_}, weight_decay {model.config_.weight_decay:g}"
    assert any(cell in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_iteration_cap_warns(rank2_population):
    with pytest.warns(ConvergenceWarning, match="iteration cap"):
        LowRankReward(rank=2, weight_decay=0.001, n_iter=3).fit(rank2_population.split.seen_train)


def test_a_converged_fit_does_not_warn(rank2_population):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LowRankReward(rank=2, weight_decay=0.01).fit(rank2_population.split.seen_train)


@pytest.mark.parametrize(
    "bad",
    [
        {"solver": "sgd"},
        {"patience": -1},
        {"lr": -0.1},
        {"tol": 0},
        {"weight_decay": -1.0},
        {"weight_decay": "strong"},
        {"cv_folds": 1},
        {"rank_grid": (0, 2)},
        {"init": "zeros"},
        {"cv_holdout": "prompts"},
        {"fewshot_prior": float("nan")},
    ],
)
def test_every_bad_setting_is_a_lore_error(bad):
    with pytest.raises(LoreError, match=next(iter(bad))):
        FitConfig.for_recipe("default", **bad)


def test_auto_needs_the_lbfgs_solver(rank2_population):
    with pytest.raises(LoreError, match="solver='lbfgs'"):
        LowRankReward(rank="auto", recipe="paper").fit(rank2_population.split.seen_train)


THREADS_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from lore_rm import LowRankReward, simulate_population, four_numbers
pop = simulate_population(d=16, true_rank=2, n_seen=60, n_unseen=20, train_per_user=30,
                          n_prompts=300, seed=4)
m = LowRankReward(rank="auto", rank_grid=(1, 2, 3), weight_decay_grid=(0.003, 0.03),
                  cv_folds=3, threads=int(sys.argv[1])).fit(pop.split.seen_train)
r = four_numbers(m, pop.split)
print(m.rank_, m.config_.weight_decay, *(repr(r[k]) for k in
      ("train", "seen_test", "fewshot_train", "unseen_test")))
"""


def test_same_seed_same_accuracy_with_one_and_two_threads():
    outs = [
        subprocess.run(
            [sys.executable, "-c", THREADS_SCRIPT, str(n)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for n in (1, 2)
    ]
    assert outs[0][:2] == outs[1][:2]  # the same rank and ridge chosen
    for a, b in zip(outs[0][2:], outs[1][2:], strict=True):
        assert abs(float(a) - float(b)) <= 1e-6


def test_a_default_fit_measures_the_feature_scale_once(rank2_population, monkeypatch):
    """The search, the refit and the seen users' shrinkage share one pass over the rows."""
    import lore_rm.fit.auto as auto
    import lore_rm.fit.hierarchy as hierarchy
    import lore_rm.fit.model as model
    import lore_rm.fit.solvers as solvers

    calls = []
    real = solvers.feature_scale
    for module in (auto, hierarchy, model, solvers):
        monkeypatch.setattr(
            module, "feature_scale", lambda *a, **k: calls.append(1) or real(*a, **k)
        )
    fitted = LowRankReward(rank="auto", seed=1, **SMALL_GRID).fit(rank2_population.split.seen_train)
    assert fitted.rank_ > 1 and fitted.history_["hierarchy"]["rounds"] >= 1
    assert len(calls) == 1
