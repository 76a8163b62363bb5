"""The thin estimator's parts: the user table, a view on a few users, rewards that say which
users were known, and a posterior that predicts under itself."""

from __future__ import annotations

import pytest
import torch

from lore_rm import Comparisons, LowRankReward, UnknownUserError
from lore_rm.fit.user_table import UserTable


def table() -> UserTable:
    w = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    return UserTable(["a", "b"], w, w.mean(0))


def test_lookup_is_by_id_with_the_population_for_unknown_users():
    t = table()
    w, known = t.lookup(["b", "zed", None, "a"], "mean")
    assert known.tolist() == [True, False, False, True]
    torch.testing.assert_close(w[0], torch.tensor([0.6, 0.4]))
    torch.testing.assert_close(w[1], t.population)
    with pytest.raises(UnknownUserError, match="unknown user id 'zed': the model knows 2 users"):
        t.lookup(["a", "zed"])
    with pytest.raises(UnknownUserError, match="user id None"):
        t.lookup([None])


def test_set_adds_users_into_spare_capacity_and_drop_removes_them():
    t = table()
    t.set(["c", "a"], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert t.ids == ["a", "b", "c"] and len(t) == 3 and "c" in t
    buffer = t._buffer
    assert buffer.shape[0] >= 16  # grown once, with room to spare
    for i in range(10):
        t.set([f"n{i}"], torch.tensor([[0.3, 0.7]]))
    assert t._buffer is buffer  # no copy while there is room
    torch.testing.assert_close(t.weights[0], torch.tensor([0.5, 0.5]))
    assert t.drop(["b", "nobody", "n3"]) == ["b", "n3"]
    assert "b" not in t and t.ids[:2] == ["a", "c"] and len(t) == 11
    torch.testing.assert_close(t.lookup(["c"])[0][0], torch.tensor([1.0, 0.0]))


def test_subset_copies_the_rows_of_the_users_it_holds():
    t = table()
    sub = t.subset(["b", "zed", "b"])
    assert sub.ids == ["b"] and sub.population is t.population
    sub.set(["b"], torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(t.lookup(["b"])[0][0], torch.tensor([0.6, 0.4]))


@pytest.fixture(scope="module")
def model() -> LowRankReward:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 3, generator=gen)
    w = torch.softmax(torch.randn(4, 3, generator=gen), -1)
    return LowRankReward.from_arrays(basis, w, ["u0", "u1", "u2", "u3"], fewshot_prior=1.0)


def test_reward_can_say_which_users_were_known(model):
    e = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    r, known = model.reward(e, ["u1", "new", None], unknown="mean", return_known=True)
    torch.testing.assert_close(r, model.reward(e, ["u1", "new", None], unknown="mean"))
    assert known.tolist() == [True, False, False]


def test_for_users_is_a_view_on_a_few_users_that_the_model_does_not_share(model):
    view = model.for_users(["u2", "stranger"])
    assert view.users_ == ["u2"] and view.basis_ is model.basis_
    view.set_user_weights(["u2"], torch.tensor([[1.0, 0.0, 0.0]]))
    assert not torch.equal(model.weights_for(["u2"])[0], view.weights_for(["u2"])[0])


def test_the_posterior_predicts_as_the_model_does_under_it(model):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 6, generator=gen)
    data = Comparisons.from_features(x, [f"u{i % 4}" for i in range(12)])
    post = model.weights_posterior(data, users=["u9"], unknown="mean")
    e = torch.randn(5, 6, generator=gen)
    users = ["u0", "u1", "u9", "u3", "u2"]
    r, std = post.reward(e, users, unknown="mean", personalization=0.5)
    want = model.reward(
        e, users, unknown="mean", return_std=True, posterior=post, personalization=0.5
    )
    torch.testing.assert_close((r, std), want)
    torch.testing.assert_close(post.proba(data), model.predict_proba(data, posterior=post))
    asked = post.select_questions(data, 2, seed=3)
    again = model.select_questions(data, 2, posterior=post, seed=3)
    assert asked.users == again.users and torch.equal(asked.rows, again.rows)
