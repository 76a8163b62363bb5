"""Personalise only as much as the data supports: shrinkage, strength, signed weights, the
report."""

import json

import pytest
import torch

from lore_rm import Comparisons, LoreError, LowRankReward, simulate_population
from lore_rm.evaluate.personalization import personalization_report
from lore_rm.fit.config import FitConfig
from lore_rm.fit.personalizes import does_not_personalize
from lore_rm.fit.selection import HeldOut, choose_strength, new_pair_split

FAST = {"weight_decay": 0.01, "personalization": 1.0, "n_iter": 300}


@pytest.fixture(scope="module")
def differ():
    """Users who differ: planted rank 2, Dirichlet users."""
    return simulate_population(
        d=12, true_rank=2, n_seen=60, n_unseen=40, train_per_user=30, test_per_user=20,
        fewshot_per_user=15, n_prompts=300, margin_scale=4.0, seed=5,
    )  # fmt: skip


@pytest.fixture(scope="module")
def agree():
    """Users who agree: every user's weights near the centre (Dirichlet 1000)."""
    return simulate_population(
        d=12, true_rank=2, dirichlet_alpha=1000.0, n_seen=60, n_unseen=40, train_per_user=15,
        test_per_user=15, fewshot_per_user=15, n_prompts=300, margin_scale=2.0, seed=6,
    )  # fmt: skip


def _one_and_many(pop):
    """The seen comparisons with user 0 cut to one comparison and user 1 given 1,000."""
    data = pop.split.seen_train
    u = data.user_index
    first = (u == 0).nonzero()[:1, 0]
    keep = torch.cat([first, (u != 0).nonzero()[:, 0]])
    many = (u == 1).nonzero()[:, 0]
    extra = many[torch.arange(1000) % many.numel()]  # user 1's rows repeated to 1,000
    return data.subset(torch.cat([keep, extra]))


def test_one_comparison_stays_near_the_population_and_a_thousand_keep_their_own(differ):
    data = _one_and_many(differ)
    ids = list(data.user_ids)
    free = LowRankReward(rank=2, hierarchical=False, **FAST).fit(data)
    shrunk = LowRankReward(rank=2, **FAST).fit(data)
    assert shrunk.history_["hierarchy"]["rounds"] >= 1
    rounds = shrunk.history_["hierarchy"]
    # converged unless the round cap stopped it while the prior still moved
    assert rounds["converged"] == (rounds["rounds"] < 4 or rounds["last_change"] < 0.05)
    assert shrunk.history_["prior"]["kind"] == "learned"

    def distances(model):  # L1 distance of every user's weights from the population's
        return (model.user_weights_ - model.population_weights_).abs().sum(1)

    assert ids[:2] == [shrunk.users_[0], shrunk.users_[1]]
    d_free, d = distances(free), distances(shrunk)
    # one comparison: pulled toward the population, well inside the users' typical spread
    assert float(d[0]) < 0.6 * float(d_free[0])
    assert float(d[0]) < 0.5 * float(d.median())
    # a thousand comparisons keep their own weights, free or shrunk
    assert float(d[1]) > 0.9 * float(d_free[1])
    assert float(d[1]) > float(d.median())


def test_strength_interpolates_between_the_shared_and_the_own_weights(differ):
    split = differ.split
    model = LowRankReward(rank=2, **FAST).fit(split.seen_train)
    users = list(model.users_[:5])
    own, _ = model.weights_for(users, personalization=1.0)
    shared, _ = model.weights_for(users, personalization=0.0)
    half, _ = model.weights_for(users, personalization=0.5)
    assert torch.allclose(shared, model.population_weights_.expand(5, -1))
    assert torch.allclose(half, 0.5 * (own + shared), atol=1e-6)
    e = split.seen_test.table[:5]
    r0 = model.reward(e, users, personalization=0.0)
    r1 = model.reward(e, users, personalization=1.0)
    assert torch.allclose(model.reward(e, users, personalization=0.25), 0.75 * r0 + 0.25 * r1)
    assert torch.allclose(r0, model.reward(e, [None] * 5, unknown="mean"))
    # the model's own strength is the default, and saved with it
    model.personalization_ = 0.0
    assert torch.allclose(model.reward(e, users), r0)
    assert not model.personalizes
    with pytest.raises(LoreError, match="personalization"):
        model.reward(e, users, personalization=1.5)


def test_the_search_turns_personalisation_off_where_users_agree_and_on_where_they_differ(
    agree, differ
):
    grid = {"rank_grid": (1, 2), "weight_decay_grid": (0.01, 0.1, 1.0), "cv_folds": 3}
    on = LowRankReward(rank=2, **grid).fit(differ.split.seen_train)
    off = LowRankReward(rank=2, **grid).fit(agree.split.seen_train)
    assert on.personalization_ == 1.0 and on.personalizes and on.rank_ == 2
    # strength 0 at rank 2: the model is the pooled reward, and says why
    assert off.rank_ == 1 and not off.personalizes
    sel = off.history_["selection"]
    assert sel["zero_personalization"]["rank"] == 2
    cell = next(r for r in sel["rows"] if r["rank"] == 2 and r["weight_decay"] ==
                sel["zero_personalization"]["weight_decay"])  # fmt: skip
    assert cell["personalization"] == 0.0
    assert set(cell["strengths"]) == {"0", "0.25", "0.5", "0.75", "1"}
    report = personalization_report(off, agree.split, shots=(5,), trials=1)
    assert report.summary.startswith("No measurable gain from personalisation")
    assert "users' own weights at rank 2 beat the shared ones" in report.summary


def test_a_given_rank_the_data_does_not_support_serves_the_pooled_reward(agree, differ):
    """No zero strength to choose (the grid starts at 0.5): at a given rank the pooled reward
    still enters the one-standard-error rule, as it does for rank='auto'."""
    grid = {"weight_decay_grid": (0.01, 0.1, 1.0), "cv_folds": 3}
    grid["personalization_grid"] = (0.5, 1.0)
    off = LowRankReward(rank=2, **grid).fit(agree.split.seen_train)
    assert off.rank_ == 1 and not off.personalizes
    sel = off.history_["selection"]
    assert sel["zero_personalization"]["reason"] == "pooled"
    assert any("does not beat the pooled reward" in note for note in sel["notes"])
    assert "scored the pooled reward within one standard error" in does_not_personalize(off)
    on = LowRankReward(rank=2, **grid).fit(differ.split.seen_train)
    assert on.rank_ == 2 and on.personalizes
    # a strength given by the user is theirs: no pooled comparison
    given = LowRankReward(rank=2, personalization=1.0, **grid).fit(agree.split.seen_train)
    assert given.rank_ == 2


def test_choose_strength_takes_the_weakest_within_noise_of_the_best():
    n = 400
    users = torch.arange(40).repeat_interleave(10)
    data = Comparisons.from_features(torch.randn(n, 3), users.numpy())
    held_out = torch.ones(1, n, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(n, generator=gen).abs()
    noise = HeldOut(shared + 1.0 * torch.randn(n, generator=gen), shared, torch.zeros(n))
    assert choose_strength(data, noise, held_out, (0.0, 0.5, 1.0))[0] == 0.0
    signal = HeldOut(shared + 2.0, shared, torch.zeros(n))  # own weights: far larger margins
    lam, table = choose_strength(data, signal, held_out, (0.0, 0.5, 1.0))
    assert lam == 1.0 and table["1"]["cv_loss"] < table["0"]["cv_loss"]


def test_held_out_users_are_scored_on_pairs_their_fold_never_trained_on():
    table = torch.randn(8, 4)
    # users 0, 1, 2: rows 0-1, 2-3, 4-6; rows 0, 2 and 4 are the same pair (1 flipped)
    chosen = torch.tensor([0, 2, 1, 4, 0, 6, 3])
    rejected = torch.tensor([1, 3, 0, 5, 1, 7, 2])
    data = Comparisons.from_pairs(table, chosen, rejected, [0, 0, 1, 1, 2, 2, 2])
    pairs = data.pair_ids()
    assert pairs[0] == pairs[2] == pairs[4] and pairs[1] == pairs[6]
    user0 = torch.tensor([True, True, False, False, False, False, False])
    held_out = torch.stack([user0, ~user0])  # two folds: user 0; users 1 and 2
    dealt_here = dealt_elsewhere = 0
    for seed in range(20):  # the pair's fold is a seeded draw: see both outcomes
        keep, scored, left_out = new_pair_split(data, held_out, torch.Generator().manual_seed(seed))
        shared_scored = bool(scored[0, 0])  # pair (0, 1) is labelled by users 1 and 2 too
        for row, pair_rows in ((0, (2, 4)), (1, (6,))):
            if scored[0, row]:  # scored: no training row of that pair is kept
                assert all(keep[0, r] == 0 for r in pair_rows)
            else:  # not scored: the pair's training rows stay
                assert all(keep[0, r] == 1 for r in pair_rows)
        assert keep[0, 3] == 1 and keep[0, 5] == 1  # pairs nobody held out labelled
        assert not bool(scored[0, 2:].any()) and not bool(keep[0, :2].any())
        dealt_here += shared_scored
        dealt_elsewhere += not shared_scored
        n_left = int(((~held_out) & (keep == 0)).sum())
        assert left_out == pytest.approx(n_left / int((~held_out).sum()))
    assert dealt_here and dealt_elsewhere
    # a pair only the held-out user labelled is always scored, and nothing is left out for it
    alone = Comparisons.from_pairs(table, chosen[[3, 5]], rejected[[3, 5]], [0, 1])
    keep, scored, left_out = new_pair_split(
        alone, torch.tensor([[True, False]]), torch.Generator().manual_seed(0)
    )
    assert scored.tolist() == [[True, False]] and keep.tolist() == [[0.0, 1.0]] and left_out == 0
    dense = Comparisons.from_features(torch.randn(7, 4), [0, 0, 1, 1, 2, 2, 2])
    keep, scored, left_out = new_pair_split(dense, held_out, torch.Generator().manual_seed(0))
    assert torch.equal(scored, held_out) and torch.equal(keep, (~held_out).float())
    assert left_out == 0.0


@pytest.fixture(scope="module")
def signed(differ):
    split = differ.split
    return LowRankReward(rank=2, weights="signed", **FAST).fit(split.seen_train)


def test_signed_weights_fit_save_load_and_personalise(signed, differ, tmp_path):
    split = differ.split
    assert signed.weight_space_ == "signed"
    assert torch.allclose(signed.population_weights_, torch.tensor([1.0, 0.0]), atol=1e-4)
    assert bool((signed.user_weights_ < 0).any())  # not on the simplex
    assert signed.score(split.seen_test) > 0.6
    model = signed.copy().personalize(split.unseen_fewshot)
    assert model.score(split.unseen_test) > 0.55
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["weights"] == "signed" and config["format_version"] == 5
    loaded = LowRankReward.from_pretrained(tmp_path / "m")
    assert loaded.weight_space_ == "signed" and loaded.personalization_ == 1.0
    assert torch.equal(loaded.margins(split.unseen_test), model.margins(split.unseen_test))
    post = loaded.weights_posterior(split.unseen_fewshot)
    assert post.space == "signed"
    mean, std = loaded.margin_std(split.unseen_test, post)
    assert bool((std > 0).all()) and torch.allclose(mean, loaded.margins(split.unseen_test))
    asked = loaded.select_questions(split.unseen_fewshot, 2)
    assert bool((asked.counts == 2).all())


def test_an_old_folder_reads_as_simplex_at_full_strength(easy_rank3, tmp_path):
    easy_rank3.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    for key in ("weights", "personalization"):
        config.pop(key)
    config["format_version"] = 4
    path.write_text(json.dumps(config))
    old = LowRankReward.from_pretrained(tmp_path / "m")
    assert old.weight_space_ == "simplex" and old.personalization_ == 1.0


def test_report_fields(differ):
    split = differ.split
    model = LowRankReward(rank=2, **FAST).fit(split.seen_train)
    report = personalization_report(model, split, shots=(5, None), trials=2)
    assert report.personalizes and report.strength == 1.0
    labels = [(g.group, g.shots) for g in report.groups]
    assert labels == [("seen", None), ("new", 5), ("new", None)]
    for g in report.groups:
        assert set(g.accuracy) == {"reference", "pooled", "shared", "personal"}  # planted head
        assert g.gain["lower"] <= g.gain["mean"] <= g.gain["upper"]
        assert g.gain["mean"] == pytest.approx(g.accuracy["personal"] - g.accuracy["shared"])
        assert set(g.distribution) == {"mean", "median", "p10", "bottom_decile_mean"}
        assert g.distribution["p10"] <= g.distribution["median"]
        assert all(u in split.seen_test.user_ids or u in split.unseen_test.user_ids
                   for u in g.worse_than_shared)  # fmt: skip
    assert report.groups[0].gain["lower"] > 0  # users differ: the gain is measurable
    assert report.summary.startswith("Personalisation gains +")
    rows = report.per_user
    assert {r["group"] for r in rows} == {"seen", "new"}
    assert all(r["gain"] == pytest.approx(r["personal"] - r["shared"]) for r in rows)
    d = report.to_dict()
    assert "per_user" not in d and json.dumps(d)
    off = model.copy()
    off.personalization_ = 0.0
    quiet = personalization_report(off, split, shots=(5,), trials=1)
    assert not quiet.personalizes and quiet.summary.startswith("This model does not personalise")
    assert all(g.gain["mean"] == 0 for g in quiet.groups)


def test_the_new_settings_are_validated_and_generated_as_flags():
    from dataclasses import fields

    from lore_rm.cli.fit_options import parse_setting

    for bad in ({"personalization": 2.0}, {"personalization": "some"}, {"weights": "both"},
                {"personalization_grid": (0.0, 1.5)}):  # fmt: skip
        with pytest.raises(LoreError):
            FitConfig.for_recipe("default", **bad)
    by_name = {f.name: f for f in fields(FitConfig)}
    assert parse_setting(by_name["personalization"], "auto") == "auto"
    assert parse_setting(by_name["personalization"], "0.5") == 0.5
    assert parse_setting(by_name["weights"], "signed") == "signed"
    assert parse_setting(by_name["cv_exclude_pairs"], "false") is False
    assert FitConfig.for_recipe("paper").hierarchical is False
    assert LowRankReward().rank == "auto"
