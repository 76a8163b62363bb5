"""A bounded in-memory embedding cache for a long-running process (``lore serve``).

An RLHF loop sends the same texts again and again (the candidates of next-questions, the
responses scored for several users); :class:`MemoryCachedEmbedder` keeps the embeddings of
the most recently used texts, up to ``max_bytes``, keyed by the conversation's sha256
(:func:`~lore_rm.embed.cache.conversation_key`), and runs the backbone on the others only. It
is thread-safe; its hit rate is in :meth:`stats` and, every :data:`LOG_EVERY` texts (or
:data:`LOG_SECONDS`), in one INFO line of the ``uvicorn.error`` logger (uvicorn's server
log, printed by ``lore serve``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import torch

from lore_rm.conversation import Conversation
from lore_rm.embed.base import Embedder
from lore_rm.embed.cache import conversation_key
from lore_rm.embed.wrapped import WrappedEmbedder

LOG_EVERY = 1000  # texts looked up between two log lines
LOG_SECONDS = 300.0  # at most this long between two log lines while requests come
log = logging.getLogger("uvicorn.error.lore_rm.embedding_cache")


class MemoryCachedEmbedder(WrappedEmbedder):
    """``embedder`` with its most recently used embeddings kept in memory (``max_bytes``)."""

    def __init__(self, embedder: Embedder, max_bytes: int) -> None:
        super().__init__(embedder)
        self.capacity = max(0, int(max_bytes) // (4 * int(embedder.dim)))  # float32 rows
        self._rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._logged_at = (0, time.monotonic())

    def embed(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        keys = [conversation_key(c) for c in conversations]
        out = torch.empty(len(conversations), self.dim)
        todo: dict[bytes, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                held = self._rows.get(key)
                if held is None:
                    todo.setdefault(key, []).append(i)
                else:
                    self._rows.move_to_end(key)
                    out[i] = held
        if todo:
            emb = torch.as_tensor(
                self.inner.embed([conversations[idx[0]] for idx in todo.values()]),
                dtype=torch.float32,
            )
            for row, idx in enumerate(todo.values()):
                out[torch.tensor(idx)] = emb[row]
            with self._lock:
                for row, key in enumerate(todo):
                    self._rows[key] = emb[row].clone()
                while len(self._rows) > self.capacity:
                    self._rows.popitem(last=False)
        missed = len(todo)  # texts the backbone ran on (a repeat within the call is a hit)
        with self._lock:
            self.hits += len(keys) - missed
            self.misses += missed
        self._maybe_log()
        return out

    def stats(self) -> dict[str, float | int]:
        """Texts served from memory and embedded since the start, the hit rate, the entries
        held and their bound."""
        with self._lock:
            looked = self.hits + self.misses
            return {
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / looked if looked else 0.0,
                "entries": len(self._rows),
                "capacity": self.capacity,
            }

    def _maybe_log(self) -> None:
        s = self.stats()
        looked = s["hits"] + s["misses"]
        last, when = self._logged_at
        if looked - last < LOG_EVERY and time.monotonic() - when < LOG_SECONDS:
            return
        self._logged_at = (int(looked), time.monotonic())
        log.info(
            "embedding cache: %.1f%% of %d texts served from memory (%d embedded); "
            "%d of %d entries held",
            100 * s["hit_rate"],
            looked,
            s["misses"],
            s["entries"],
            s["capacity"],
        )
