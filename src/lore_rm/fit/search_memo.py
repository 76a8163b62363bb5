"""What cross-validated searches over the same data share.

A rank sweep (``lore evaluate``) fits every rank with its own search, and every given rank's
search walks rank 1 as well, for its pooled fallback: the same walk each time. Inside
:func:`shared_searches`, a search over the same comparisons, feature scale, config and
reference head as the one before it reuses that search's ridge walks, refinements and the
folds' start statistics instead of computing them again. They are the numbers it would
compute: the folds come from the config's seed, and the spectral and SVD starts draw nothing
(a random start does, so its walks are never reused).

Outside :func:`shared_searches` every search has a memo of its own, which keeps the folds'
start statistics between its ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.fit.config import FitConfig

Tensor = torch.Tensor


@dataclass
class SearchMemo:
    """The reusable parts of the searches over one set of inputs.

    ``walks``: (weight space, rank, ridges asked) -> the walk's rows as first scored (loose),
    with each row's folds' basis, logits and config, and the fold fits it took;
    ``refined``: (weight space, rank, ridge, path start) -> a refinement's (numbers, basis,
    logits, iterations, converged); ``fold_sums``: fold -> its users' feature sums;
    ``spectra``: fold -> the start's decompositions
    (:func:`lore_rm.fit.start.initial_point`). ``inputs`` identifies what they are about."""

    shared: bool = False  # inside shared_searches(): walks and refinements are reused
    inputs: tuple | None = None
    walks: dict[tuple, tuple[list[tuple[dict, Tensor, Tensor, FitConfig]], int]] = field(
        default_factory=dict
    )
    refined: dict[tuple, tuple] = field(default_factory=dict)
    fold_sums: dict[int, Tensor] = field(default_factory=dict)
    spectra: dict[int, dict] = field(default_factory=dict)

    def bind(self, inputs: tuple) -> SearchMemo:
        """This memo, emptied and bound to ``inputs`` unless it already holds them."""
        if self.inputs != inputs:
            self.walks.clear()
            self.refined.clear()
            self.fold_sums.clear()
            self.spectra.clear()
            self.inputs = inputs
        return self


def fingerprint(*tensors: Tensor | None) -> str:
    """A digest of tensors' shapes, dtypes and values (None counts as a value)."""
    h = hashlib.blake2b(digest_size=20)
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        flat = t.detach().reshape(-1).contiguous().cpu()
        if flat.numel():  # the buffer itself: no copy of a large table
            h.update(flat.view(torch.uint8).numpy().data)
    return h.hexdigest()


def search_inputs(data: Comparisons, sigma: Tensor, cfg: FitConfig, head: Tensor | None) -> tuple:
    """What makes two searches the same search: the comparisons (rows, users, features), the
    feature scale, the config and the reference head."""
    rows = (
        (data.chosen, data.rejected, data.table, data.table_offset)
        if data.is_table
        else (data.features,)
    )
    values = fingerprint(data.user_index, *rows, sigma, head)
    return (data.n, data.d, data.user_ids, data.is_table, values, cfg)


_ACTIVE: ContextVar[SearchMemo | None] = ContextVar("lore_search_memo", default=None)


@contextmanager
def shared_searches() -> Iterator[SearchMemo]:
    """Searches run inside share their work where their inputs are the same (module doc)."""
    token = _ACTIVE.set(SearchMemo(shared=True))
    try:
        yield _ACTIVE.get()  # type: ignore[misc]
    finally:
        _ACTIVE.reset(token)


def memo_for(data: Comparisons, sigma: Tensor, cfg: FitConfig, head: Tensor | None) -> SearchMemo:
    """The memo a search over these inputs uses: the shared one (bound to them) inside
    :func:`shared_searches`, else a new one of its own."""
    active = _ACTIVE.get()
    if active is None:
        return SearchMemo()
    return active.bind(search_inputs(data, sigma, cfg, head))
