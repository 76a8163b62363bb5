"""Elementwise functions and sums whose bits do not depend on torch's thread count, nor
(``softplus``, ``sigmoid``) on an element's place in its tensor.

Torch's CPU kernels compute ``softplus`` and ``sigmoid`` vectorised, and the few elements
past the last full vector of a loop (the tensor's end, or the edge of a thread's range when
torch splits a large op among its threads) by a scalar path that rounds differently. These
run such an op on one thread when it is large enough to be split, and compute again the
elements past its last whole block of vectors in a block of their own, so an element gets
the same bits in any tensor: the users' Newton solve re-evaluates a few users alone and gets
what evaluating all of them would. A whole-tensor sum adds its partial sums in another order
on more threads: ``total`` runs on one thread when torch would split it.
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
    """``fn(x)`` with every element on the vectorised path (on the CPU): the elements past
    the last whole block of ``LANES`` are computed again in a block of their own."""
    tail = x.numel() % LANES
    if x.device.type == "cpu" and tail:
        x = x.contiguous()  # one loop over the elements in their logical order
    with one_thread(x.device, _split(x)):
        out = fn(x)
    if x.device.type != "cpu" or not tail:
        return out
    flat = out.view(-1)
    block = x.new_zeros(LANES)
    block[:tail] = x.view(-1)[-tail:]
    flat[-tail:] = fn(block)[:tail]
    return out


def softplus(x: Tensor) -> Tensor:
    return _vectorised(F.softplus, x)


def sigmoid(x: Tensor) -> Tensor:
    return _vectorised(torch.sigmoid, x)


def total(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``x.sum()`` (in ``dtype``)."""
    with one_thread(x.device, _split(x)):
        return x.sum(dtype=dtype)
