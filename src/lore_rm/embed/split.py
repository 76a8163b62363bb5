"""A dataset folder with its embeddings, as the protocol split the fit needs."""

from __future__ import annotations

from pathlib import Path

from lore_rm.errors import DataError
from lore_rm.protocol import PROTOCOL_ROLES, ProtocolSplit


def load_split(dataset_dir: str | Path, *, all_data: bool = False) -> tuple[ProtocolSplit, dict]:
    """The dataset's four roles over its embedding store, and the store's backbone record.

    ``all_data``: every comparison as seen users' training data (the other roles empty).
    """
    from lore_rm.data.dataset import PreferenceDataset
    from lore_rm.embed.store import EmbeddingStore

    dataset = PreferenceDataset(dataset_dir)
    store = EmbeddingStore(dataset_dir)
    store.check_texts(dataset_dir)
    split = dataset.to_split(
        store.load(dtype=store.dtype), store.reference_head(), all_data=all_data
    )
    if split.seen_train.n == 0:
        counts = ", ".join(
            f"{role} {part.n}"
            for role, part in zip(
                PROTOCOL_ROLES,
                (split.seen_train, split.seen_test, split.unseen_fewshot, split.unseen_test),
                strict=True,
            )
        )
        raise DataError(
            f"{dataset_dir}: the role 'seen-train' has no comparisons ({counts}); a fit needs "
            "seen users' training comparisons: prepare the dataset again with some seen users"
        )
    return split, store.backbone
