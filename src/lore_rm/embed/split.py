"""A dataset folder with its embeddings, as the protocol split the fit needs."""

from __future__ import annotations

from pathlib import Path

from lore_rm.protocol import ProtocolSplit


def load_split(dataset_dir: str | Path) -> tuple[ProtocolSplit, dict]:
    """The dataset's four roles over its embedding store, and the store's backbone record."""
    from lore_rm.data.dataset import PreferenceDataset
    from lore_rm.embed.store import EmbeddingStore

    dataset = PreferenceDataset(dataset_dir)
    store = EmbeddingStore(dataset_dir)
    store.check_texts(dataset_dir)
    split = dataset.to_split(store.load(), store.reference_head())
    return split, store.backbone
