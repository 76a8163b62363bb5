"""The metrics as pure tensor functions, and the FourNumbers record."""

import json
import math

import pytest
import torch

from lore_rm import Comparisons
from lore_rm.metrics import FourNumbers, mean_accuracy, per_user_accuracy


def test_per_user_accuracy_on_plain_tensors():
    margins = torch.tensor([1.0, -1.0, 0.0, 2.0, 3.0])
    users = torch.tensor([0, 0, 0, 2, 2])
    acc = per_user_accuracy(margins, users, n_users=4)
    # user 0: one of three right (a tie is wrong); user 1 and 3: no comparison; user 2: all
    assert acc[0].item() == pytest.approx(1 / 3)
    assert math.isnan(acc[1].item()) and math.isnan(acc[3].item())
    assert acc[2].item() == 1.0
    assert mean_accuracy(margins, users, 4) == pytest.approx((2 / 3, 1 / 3))


def test_comparisons_stand_in_for_the_user_index():
    x = torch.randn(6, 3)
    comps = Comparisons.from_features(x, ["a", "b", "a", "b", "c", "c"])
    margins = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, -1.0])
    by_tensor = per_user_accuracy(margins, comps.user_index, comps.n_users)
    torch.testing.assert_close(per_user_accuracy(margins, comps), by_tensor)
    assert by_tensor.tolist() == [0.5, 1.0, 0.0]


def test_four_numbers_reads_like_a_dict():
    values = dict(
        train=0.9,
        train_std=0.1,
        seen_test=0.8,
        seen_test_std=0.2,
        fewshot_train=0.7,
        fewshot_train_std=0.3,
        unseen_test=0.6,
        unseen_test_std=0.4,
    )
    numbers = FourNumbers(**values)
    assert numbers == values and list(numbers) == list(values)
    assert numbers["unseen_test"] == numbers.unseen_test == 0.6
    row = {"rank": 3}
    row.update(numbers)
    assert row == {"rank": 3, **values}
    assert json.loads(json.dumps(numbers.to_dict())) == values
    with pytest.raises(KeyError):
        numbers["accuracy"]


def test_bootstrap_mean_interval_covers_the_mean_and_narrows_with_users():
    from lore_rm.metrics import bootstrap_mean

    gen = torch.Generator().manual_seed(0)
    small = bootstrap_mean(0.05 + 0.1 * torch.randn(50, generator=gen))
    large = bootstrap_mean(0.05 + 0.1 * torch.randn(2000, generator=gen))
    for r in (small, large):
        assert r.lower < r.mean < r.upper
    assert large.upper - large.lower < 0.5 * (small.upper - small.lower)
    assert large.excludes_zero() and abs(large.mean - 0.05) < 0.01
    nan_rows = bootstrap_mean(torch.tensor([0.1, float("nan"), 0.3]))
    assert nan_rows.n == 2 and nan_rows.mean == pytest.approx(0.2)
    assert bootstrap_mean(torch.tensor([])).n == 0
    assert bootstrap_mean(torch.zeros(30)).excludes_zero() is False


def test_one_accuracy_kernel_for_the_metrics_and_the_folds():
    """The search's per-fold accuracy and metrics.per_user_accuracy count the same way."""
    from lore_rm.metrics import user_hits

    gen = torch.Generator().manual_seed(0)
    margins = torch.randn(3, 40, generator=gen)
    margins[:, :4] = 0.0  # ties are wrong
    users = torch.randint(0, 6, (40,), generator=gen)
    held = torch.rand(3, 40, generator=gen) > 0.5
    hits, total = user_hits(margins, users, 6, held)
    for f in range(3):
        acc = per_user_accuracy(margins[f][held[f]], users[held[f]], 6)
        has = total[f] > 0
        torch.testing.assert_close((hits[f] / total[f].clamp_min(1))[has].double(), acc[has])
        assert torch.isnan(acc[~has]).all()
