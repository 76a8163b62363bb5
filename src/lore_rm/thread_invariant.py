"""Elementwise functions and sums whose bits do not depend on torch's thread count.

Torch splits a large elementwise op or reduction among its threads. ``softplus`` and
``sigmoid`` then compute the few elements at the edge of a thread's range by a scalar path
that rounds differently from the vectorised one, and a whole-tensor sum adds its partial sums
in another order. These run such an op on one thread when it is large enough to be split;
on one thread (and below torch's grain size) they are the plain op, the same bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lore_rm.threads import one_thread

Tensor = torch.Tensor
GRAIN = 32768  # torch's internal::GRAIN_SIZE: smaller ops run on one thread anyway


def _split(x: Tensor) -> bool:
    return x.numel() > GRAIN


def softplus(x: Tensor) -> Tensor:
    with one_thread(x.device, _split(x)):
        return F.softplus(x)


def sigmoid(x: Tensor) -> Tensor:
    with one_thread(x.device, _split(x)):
        return torch.sigmoid(x)


def total(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``x.sum()`` (in ``dtype``)."""
    with one_thread(x.device, _split(x)):
        return x.sum(dtype=dtype)
