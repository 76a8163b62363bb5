"""Elementwise functions and sums whose bits do not depend on torch's thread count, nor
(``softplus``, ``sigmoid``) on an element's place in its tensor.

Torch's CPU kernels compute ``softplus`` and ``sigmoid`` vectorised, and the few elements
past the last full vector of a loop (the tensor's end, or the edge of a thread's range when
torch splits a large op among its threads) by a scalar path that rounds differently. These
run such an op on one thread when it is large enough to be split, on a copy padded to a
whole number of vectors, so an element gets the same bits in any tensor: the users' Newton
solve re-evaluates a few users alone and gets what evaluating all of them would. A
whole-tensor sum adds its partial sums in another order on more threads: ``total`` runs on
one thread when torch would split it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lore_rm.threads import one_thread

Tensor = torch.Tensor
GRAIN = 32768  # torch's internal::GRAIN_SIZE: smaller ops run on one thread anyway
#: elements per padded block: a multiple of the two vectors torch's CPU loops take at a time
#: (float32 and float64, AVX2 and AVX-512)
LANES = 64


def _split(x: Tensor) -> bool:
    return x.numel() > GRAIN


def _vectorised(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)`` with every element on the vectorised path (on the CPU)."""
    n = x.numel()
    if x.device.type != "cpu" or n % LANES == 0:
        with one_thread(x.device, _split(x)):
            return fn(x)
    flat = x.reshape(-1)
    padded = torch.cat([flat, flat.new_zeros(LANES - n % LANES)])
    with one_thread(x.device, _split(padded)):
        return fn(padded)[:n].view(x.shape)


def softplus(x: Tensor) -> Tensor:
    return _vectorised(F.softplus, x)


def sigmoid(x: Tensor) -> Tensor:
    return _vectorised(torch.sigmoid, x)


def total(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``x.sum()`` (in ``dtype``)."""
    with one_thread(x.device, _split(x)):
        return x.sum(dtype=dtype)
