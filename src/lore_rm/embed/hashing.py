"""A deterministic, dependency-free stand-in backbone: hashed bag of words.

Not a reward model: it exists so pipelines, services and tests run with no model weights.
The same text always gets the same vector, in any process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import torch

from lore_rm.conversation import Conversation

_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Signed feature hashing of ``role:word`` tokens into ``dim`` buckets, L2-normalised."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        self.dim = dim
        self.seed = seed
        self.name = f"hashing-{dim}"

    def _vector(self, conversation: Conversation) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float64)
        for i, message in enumerate(conversation):
            last = i == len(conversation) - 1
            role = "response" if last else message.get("role", "")
            for word in _TOKEN.findall(message.get("content", "").lower()):
                h = hashlib.blake2b(f"{self.seed}|{role}|{word}".encode(), digest_size=8)
                n = int.from_bytes(h.digest(), "little")
                v[n % self.dim] += 1.0 if (n >> 63) & 1 else -1.0
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def embed(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        if not conversations:
            return torch.zeros(0, self.dim)
        return torch.from_numpy(np.stack([self._vector(c) for c in conversations])).float()

    def reference_head(self) -> torch.Tensor | None:
        g = torch.Generator().manual_seed(self.seed)
        v = torch.randn(self.dim, generator=g)
        return v / v.norm()
