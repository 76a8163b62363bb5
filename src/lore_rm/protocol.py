"""The four comparison roles of the LoRe protocol, as one object."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lore_rm.comparisons import Comparisons

PROTOCOL_ROLES = ("seen-train", "seen-test", "unseen-fewshot", "unseen-test")


@dataclass
class ProtocolSplit:
    """Seen users' train/test comparisons and unseen users' few-shot/test comparisons.

    ``reference_head`` (d,) is the backbone's own reward direction, needed for rank 0 and for
    the cosine regulariser; ``None`` when the embeddings come without one.
    ``unseen_test_margins`` (N,) are the TRUE Bradley–Terry margins of ``unseen_test``'s rows
    where the population is planted (simulated), so evaluations can check interval coverage;
    ``None`` for real data.
    """

    seen_train: Comparisons
    seen_test: Comparisons
    unseen_fewshot: Comparisons
    unseen_test: Comparisons
    reference_head: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    unseen_test_margins: torch.Tensor | None = None
