"""The objective's softplus and sigmoid give an element the same bits wherever it sits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lore_rm.thread_invariant import LANES, sigmoid, softplus


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3 * LANES + 5),
    start=st.integers(0, 3 * LANES),
    length=st.integers(1, 2 * LANES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10_000),
)
@pytest.mark.parametrize("fn", [softplus, sigmoid])
def test_a_slice_gets_the_bits_of_the_whole_tensor(fn, n, start, length, dtype, seed):
    """Torch computes the elements past a loop's last full vector by a scalar path that
    rounds otherwise; these functions never take it, so a few users evaluated alone get
    what evaluating everyone would give them."""
    x = 20.0 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    part = x[min(start, n - 1) : min(start, n - 1) + length]
    assert torch.equal(fn(part), fn(x)[min(start, n - 1) : min(start, n - 1) + length])


def test_the_shape_and_values_are_the_plain_functions():
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(softplus(x), torch.nn.functional.softplus(x), rtol=1e-15, atol=0)
    torch.testing.assert_close(sigmoid(x), torch.sigmoid(x), rtol=1e-15, atol=0)
    assert softplus(x[:, :, 0]).shape == (3, 7)  # a non-contiguous input keeps its shape


@pytest.mark.parametrize("fn", [softplus, sigmoid])
def test_a_transposed_tensor_gets_the_bits_of_its_contiguous_copy(fn):
    x = 20.0 * torch.randn(37, 11, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fn(x.T), fn(x.T.contiguous()))
    assert torch.equal(fn(x.T)[3:5], fn(x.T.contiguous()[3:5]))
