"""Embedding backbones: conversations in, one vector per conversation out.

``load_backbone(name_or_path, ...)`` gives an :class:`Embedder`; ``embed_dataset`` fills a
dataset folder's resumable embedding store; ``EmbeddingStore(dir).load()`` reads it back.
Heavy modules (transformers, the store) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lore_rm.conversation import Conversation
from lore_rm.embed.base import Embedder
from lore_rm.embed.hashing import HashingEmbedder

if TYPE_CHECKING:  # pragma: no cover
    from lore_rm.embed.backbones import load_backbone
    from lore_rm.embed.runner import EmbedReport, embed_dataset
    from lore_rm.embed.store import EmbeddingStore, StoreMismatchError

__all__ = [
    "Conversation",
    "EmbedReport",
    "Embedder",
    "EmbeddingStore",
    "HashingEmbedder",
    "StoreMismatchError",
    "embed_dataset",
    "load_backbone",
]

_LAZY = {
    "load_backbone": "lore_rm.embed.backbones",
    "EmbeddingStore": "lore_rm.embed.store",
    "EmbedReport": "lore_rm.embed.runner",
    "StoreMismatchError": "lore_rm.embed.store",
    "embed_dataset": "lore_rm.embed.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lore_rm.embed' has no attribute {name!r}")
