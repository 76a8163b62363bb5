"""The interface every embedding backbone implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from lore_rm.conversation import Conversation

__all__ = ["Conversation", "Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Maps conversations to embeddings ``e`` (the space the low-rank basis lives in)."""

    name: str  # backbone name or path, recorded in manifests and model configs

    @property
    def dim(self) -> int:
        """Embedding width d."""
        ...

    def embed(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """Float32 tensor (len(conversations), d), on the CPU, in input order.

        An embedder may also take ``progress=callable``: it is then called with the number of
        texts each batch finished (the store's progress bar moves per batch, not per shard).
        """
        ...

    def reference_head(self) -> torch.Tensor | None:
        """The backbone's own reward direction (d,), or None when it has no reward head."""
        ...
