"""A ``None`` user id: what the docstrings of ``reward`` / ``weights_for`` say is what happens."""

import inspect

import pytest
import torch

from lore_rm import LowRankReward, UnknownUserError


def test_a_none_user_is_unknown_as_documented(easy_rank3):
    model = easy_rank3
    e = torch.randn(3, model.d_)
    with pytest.raises(UnknownUserError, match=r"user id None: .*unknown='mean'"):
        model.reward(e, [None] * 3)
    r = model.reward(e, [None] * 3, unknown="mean")
    torch.testing.assert_close(
        r, model.reward_scale * (e @ model.basis_ @ model.population_weights_)
    )
    _, known = model.weights_for([None, model.users_[0]], unknown="mean")
    assert known.tolist() == [False, True]
    for method in (LowRankReward.reward, LowRankReward.weights_for):
        doc = inspect.getdoc(method) or ""
        assert "``None``" in doc and 'unknown="mean"' in doc, method.__name__
        assert "always gets" not in doc and "A ``None`` user gets" not in doc
