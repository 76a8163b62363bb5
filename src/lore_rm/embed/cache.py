"""A content-addressed embedding cache on disk, shared by every dataset (``--cache DIR``).

A text is embedded once per backbone, whatever dataset, benchmark or file it comes from:
the cache is keyed by (backbone, conversation), the backbone by its content fingerprint
(:mod:`~lore_rm.embed.fingerprint`) and the settings that change its output, the
conversation by the sha256 of its messages. Layout::

    DIR/<backbone key>/backbone.json        the backbone identity the key was made from
    DIR/<backbone key>/<segment>/           one per batch of new texts, written whole under
        texts.parquet                       a temporary name and renamed (so a segment is
        embeddings/                         complete or absent): a dataset-shaped folder, its
                                            texts (with a ``key`` column) and an embedding
                                            store filled by :func:`embed_dataset` (manifest,
                                            checksummed shard; read with EmbeddingStore)

:class:`CachedEmbedder` wraps any :class:`~lore_rm.embed.base.Embedder`: it returns cached rows
and runs the backbone on the rest only, adding them as new segments of at most
:data:`SEGMENT_TEXTS` texts (a killed run loses at most one segment). Several processes may
share a cache: each writes its own segments; a text two of them embed at once is stored
twice, harmlessly.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lore_rm.conversation import Conversation
from lore_rm.data.layout import EMBEDDINGS_DIR, TEXTS_FILE, read_parquet
from lore_rm.embed.backbones import backbone_identity
from lore_rm.embed.base import Embedder
from lore_rm.embed.wrapped import WrappedEmbedder
from lore_rm.errors import DataError
from lore_rm.io import atomic_folder, atomic_write_json

CACHE_FORMAT = "lore-rm-embedding-cache"
CACHE_FORMAT_VERSION = 1
BACKBONE_FILE = "backbone.json"
SEGMENT_TEXTS = 512  # texts per segment: the unit a killed run can lose
LOADED_SEGMENTS = 32  # segments kept in memory while reading
# what changes a backbone's embeddings of a text (the name only when no fingerprint is known)
_KEY_FIELDS = ("kind", "pooling", "dtype", "chat_template_sha256", "max_length", "d")


def conversation_key(conversation: Conversation) -> bytes:
    """sha256 of a conversation's messages in one canonical JSON form."""
    text = json.dumps(conversation, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).digest()


def backbone_key(identity: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(folder name, the fields it hashes) of a backbone identity: its content fingerprint
    (else its name and revision) and the settings that change what it computes."""
    fields = {k: identity.get(k) for k in _KEY_FIELDS}
    if identity.get("fingerprint"):
        fields["fingerprint"] = identity["fingerprint"]
    else:
        fields["name"], fields["revision"] = identity.get("name"), identity.get("revision")
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return digest[:24], fields


class EmbeddingCache:
    """One backbone's part of a cache folder: look texts up, read their rows, add new ones."""

    def __init__(self, root: str | os.PathLike, identity: dict[str, Any]) -> None:
        key, fields = backbone_key(identity)
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"{self.root}: the embedding cache must be a folder")
        self.path = self.root / key
        self.d = int(identity["d"])
        self.path.mkdir(parents=True, exist_ok=True)
        record = self.path / BACKBONE_FILE
        if not record.is_file():
            atomic_write_json(
                record,
                {"format": CACHE_FORMAT, "format_version": CACHE_FORMAT_VERSION, **fields},
            )
        self._where: dict[bytes, tuple[str, int]] = {}
        self._segments: set[str] = set()
        self._loaded: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.refresh()

    def __len__(self) -> int:
        return len(self._where)

    def refresh(self) -> None:
        """Index the segments written since the last look (by this or another process)."""
        for seg in sorted(os.listdir(self.path)):
            if seg.startswith(".") or seg in self._segments or not (self.path / seg).is_dir():
                continue
            keys = read_parquet(self.path / seg / TEXTS_FILE, columns=["key"]).column("key")
            for row, key in enumerate(keys.to_pylist()):
                self._where.setdefault(key, (seg, row))
            self._segments.add(seg)

    def lookup(self, keys: Sequence[bytes]) -> list[tuple[str, int] | None]:
        return [self._where.get(k) for k in keys]

    def rows(self, places: Sequence[tuple[str, int]]) -> torch.Tensor:
        """The embeddings (float32) at ``places`` (segment, row), in that order."""
        out = torch.empty(len(places), self.d)
        by_segment: dict[str, list[int]] = {}
        for i, (seg, _) in enumerate(places):
            by_segment.setdefault(seg, []).append(i)
        for seg, idx in by_segment.items():
            table = self._segment(seg)
            out[torch.tensor(idx)] = table[torch.tensor([places[i][1] for i in idx])]
        return out

    def _segment(self, seg: str) -> torch.Tensor:
        from lore_rm.embed.store import EmbeddingStore

        table = self._loaded.pop(seg, None)
        if table is None:
            table = EmbeddingStore(self.path / seg).load()  # checks every shard's sha256
            if table.shape[1] != self.d:
                raise DataError(f"{self.path / seg}: rows of width {table.shape[1]}, not {self.d}")
        self._loaded[seg] = table
        while len(self._loaded) > LOADED_SEGMENTS:
            self._loaded.popitem(last=False)
        return table

    def add(
        self, conversations: Sequence[Conversation], keys: Sequence[bytes], embedder: Embedder
    ) -> torch.Tensor:
        """Embed ``conversations`` (keys given) with ``embedder`` into a new segment; their
        embeddings (float32)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from lore_rm.embed.runner import embed_dataset
        from lore_rm.embed.store import EmbeddingStore

        seg = uuid.uuid4().hex
        with atomic_folder(self.path / seg) as tmp:
            table = pa.table(
                {
                    "text_id": pa.array(range(len(conversations)), pa.int64()),
                    "prompt_id": pa.array([k.hex()[:16] for k in keys]),
                    "messages": pa.array(
                        [json.dumps(c, ensure_ascii=False) for c in conversations]
                    ),
                    "key": pa.array(list(keys), pa.binary()),
                }
            )
            pq.write_table(table, tmp / TEXTS_FILE)
            embed_dataset(tmp, embedder, progress=False, rank=0, world_size=1)
            emb = EmbeddingStore(tmp / EMBEDDINGS_DIR).load()
        for row, key in enumerate(keys):
            self._where.setdefault(key, (seg, row))
        self._segments.add(seg)
        return emb


class CachedEmbedder(WrappedEmbedder):
    """``embedder`` behind an :class:`EmbeddingCache` in ``cache`` (a folder): the same
    embeddings, the backbone run only on texts the cache does not hold.

    ``hits`` / ``misses`` count the texts served from the cache / embedded so far."""

    def __init__(self, embedder: Embedder, cache: str | os.PathLike) -> None:
        super().__init__(embedder)
        self.cache = EmbeddingCache(cache, backbone_identity(embedder))
        self.hits = 0
        self.misses = 0

    def embed(
        self,
        conversations: Sequence[Conversation],
        progress: Callable[[int], Any] | None = None,
    ) -> torch.Tensor:
        keys = [conversation_key(c) for c in conversations]
        places = self.cache.lookup(keys)
        if any(p is None for p in places):
            self.cache.refresh()  # another process may have embedded them meanwhile
            places = self.cache.lookup(keys)
        out = torch.empty(len(conversations), self.dim)
        todo: dict[bytes, list[int]] = {}
        for i, place in enumerate(places):
            if place is None:
                todo.setdefault(keys[i], []).append(i)
        hit = [i for i, p in enumerate(places) if p is not None]
        if hit:
            out[torch.tensor(hit)] = self.cache.rows([places[i] for i in hit])  # type: ignore[misc]
            if progress is not None:
                progress(len(hit))
        new_keys = list(todo)
        truncated_before = getattr(self.inner, "truncated", 0)
        with warnings.catch_warnings():  # one truncation warning per call, below
            warnings.filterwarnings("ignore", message=".* longer than max_length")
            for start in range(0, len(new_keys), SEGMENT_TEXTS):
                chunk = new_keys[start : start + SEGMENT_TEXTS]
                emb = self.cache.add([conversations[todo[k][0]] for k in chunk], chunk, self.inner)
                pairs = [(i, row) for row, k in enumerate(chunk) for i in todo[k]]
                out[torch.tensor([i for i, _ in pairs])] = emb[torch.tensor([r for _, r in pairs])]
                if progress is not None:
                    progress(len(pairs))
        truncated = getattr(self.inner, "truncated", 0) - truncated_before
        if truncated:
            warnings.warn(
                f"{self.name}: {truncated} of the {len(todo)} texts embedded were longer than "
                f"max_length = {getattr(self.inner, 'max_length', '?')} tokens and kept only "
                "their last tokens",
                stacklevel=2,
            )
        self.hits += len(hit)
        self.misses += len(conversations) - len(hit)
        return out
