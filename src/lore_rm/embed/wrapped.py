"""A backbone wrapped by another object (a cache) that describes itself as the backbone does:
stores made through the wrapper and without it are the same store."""

from __future__ import annotations

from typing import Any

import torch

from lore_rm.embed.backbones import backbone_identity
from lore_rm.embed.base import Embedder


class WrappedEmbedder:
    """``inner``'s name, dimension, identity and reference head; any other attribute
    (``max_length``, ``truncated``, ``reference_bias``, ...) read from ``inner`` too."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner = embedder
        self.name: str = embedder.name

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    def identity(self) -> dict[str, Any]:
        return backbone_identity(self.inner)

    def reference_head(self) -> torch.Tensor | None:
        return self.inner.reference_head()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
