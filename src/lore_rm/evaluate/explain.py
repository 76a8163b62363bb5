"""What each basis column means: traceability from basis scores back to conversations.

For a model and a dataset embedded with its backbone, every conversation ``t`` gets a score
on every basis column ``k``: ``s[t, k] = reward_scale * e_t @ V[:, k]``, the reward a user
putting all their weight on column ``k`` would give it. Per column the report lists

* the conversations scoring highest and lowest. By default (``center="prompt"``) a score is
  taken relative to the mean score of the other responses to the same prompt, so the lists
  show which responses the column prefers, not which prompts it likes; prompts with one
  response are left out of the lists (``center="none"`` uses the raw scores);
* its share of the users' spread: users differ in reward through their weights, and the
  variance over users of a conversation's reward, averaged over conversations, is
  ``trace(S C)`` with ``S`` the covariance of the scores over conversations and ``C`` the
  covariance of the weights over users. Column ``k`` alone carries
  ``S[k, k] * C[k, k]``; ``share`` is that over the sum of the columns'; ``cross_share``
  is the part of ``trace(S C)`` in the cross terms (columns that vary together), which no
  single column owns;
* its weight in the population and the users loading on it most (largest weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lore_rm.conversation import Conversation
from lore_rm.errors import DataError
from lore_rm.fit.model import LowRankReward

CENTERS = ("prompt", "none")


def _clip(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: max(chars - 1, 0)] + "…"


def _prompt_of(conv: Conversation) -> str:
    users = [m["content"] for m in conv[:-1] if m["role"] == "user"]
    return users[-1] if users else ""


def centered_by_prompt(scores: Tensor, prompt_ids: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``scores`` (T, K) less the mean of their prompt's rows, and which rows share their
    prompt with another row (the others are left out of the lists)."""
    codes: dict[str, int] = {}
    group = torch.tensor([codes.setdefault(p, len(codes)) for p in prompt_ids])
    counts = torch.bincount(group, minlength=len(codes)).to(scores.dtype)
    sums = torch.zeros(len(codes), scores.shape[1], dtype=scores.dtype).index_add_(0, group, scores)
    return scores - (sums / counts[:, None])[group], counts[group] > 1


def explain_basis(
    model: LowRankReward,
    embeddings: Tensor,
    conversations: Sequence[Conversation],
    prompt_ids: Sequence[str] | None = None,
    *,
    top: int = 5,
    top_users: int = 5,
    center: str = "prompt",
    chars: int = 200,
) -> dict[str, Any]:
    """The per-column report (a JSON-able dict); see the module docstring."""
    if center not in CENTERS:
        raise DataError(f"center must be one of {', '.join(CENTERS)}, got {center!r}")
    e = torch.as_tensor(embeddings, dtype=torch.float32)
    if e.ndim != 2 or e.shape[1] != model.d_:
        raise DataError(f"embeddings must have shape (T, {model.d_}), got {tuple(e.shape)}")
    if e.shape[0] != len(conversations) or e.shape[0] == 0:
        raise DataError(f"{e.shape[0]} embeddings for {len(conversations)} conversations")
    scores = (model.reward_scale * (e @ model.basis_)).double()  # (T, K)
    usable = torch.ones(scores.shape[0], dtype=torch.bool)
    if center == "prompt":
        if prompt_ids is None or len(prompt_ids) != scores.shape[0]:
            raise DataError("center='prompt' needs one prompt id per conversation")
        scores, usable = centered_by_prompt(scores, prompt_ids)
        if not bool(usable.any()):
            raise DataError("no prompt has two responses: use center='none'")
    weights = model.user_weights_.double()
    n_users = weights.shape[0]
    s_cov = torch.cov(scores[usable].T).reshape(scores.shape[1], -1)
    w_cov = (
        torch.cov(weights.T, correction=0).reshape(weights.shape[1], -1)
        if n_users > 1
        else torch.zeros(weights.shape[1], weights.shape[1], dtype=torch.float64)
    )
    alone = torch.diagonal(s_cov) * torch.diagonal(w_cov)
    total = float(torch.trace(s_cov @ w_cov))
    diag_sum = float(alone.sum())
    shares = alone / diag_sum if diag_sum > 0 else torch.zeros_like(alone)
    ranked = scores.masked_fill(~usable[:, None], float("nan"))
    k = scores.shape[1]
    n_top = min(top, int(usable.sum()))
    high = torch.topk(ranked.nan_to_num(float("-inf")), n_top, dim=0).indices  # (n_top, K)
    low = torch.topk(-ranked.nan_to_num(float("inf")), n_top, dim=0).indices
    n_lead = min(top_users, n_users)
    leaders = torch.topk(weights, n_lead, dim=0).indices if n_lead else None

    def text(row: int, col: int) -> dict[str, Any]:
        conv = conversations[row]
        return {
            "text_id": row,
            "prompt_id": None if prompt_ids is None else str(prompt_ids[row]),
            "score": float(scores[row, col]),
            "prompt": _clip(_prompt_of(conv), chars),
            "response": _clip(conv[-1]["content"], chars),
        }

    columns = []
    for col in range(k):
        columns.append(
            {
                "column": col,
                "share": float(shares[col]),
                "spread": float(alone[col]),
                "population_weight": float(model.population_weights_[col]),
                "score_std": float(s_cov[col, col].clamp_min(0).sqrt()),
                "highest": [text(int(r), col) for r in high[:, col].tolist()],
                "lowest": [text(int(r), col) for r in low[:, col].tolist()],
                "top_users": []
                if leaders is None
                else [
                    {"user": model.users_[int(u)], "weight": float(weights[int(u), col])}
                    for u in leaders[:, col].tolist()
                ],
            }
        )
    return {
        "rank": int(model.rank_),
        "n_columns": k,
        "n_texts": int(scores.shape[0]),
        "n_texts_listed": int(usable.sum()),
        "n_users": n_users,
        "center": center,
        "users_spread": total,
        "cross_share": (total - diag_sum) / total if total > 0 else 0.0,
        "columns": columns,
    }


def explain_text(report: dict[str, Any], n: int = 3) -> str:
    """A short human report: per column its share of the spread, the users leaning on it,
    and the first ``n`` highest and lowest conversations."""
    how = "relative to the prompt" if report["center"] == "prompt" else "raw"
    lines = [
        f"{report['n_columns']} basis column(s) over {report['n_texts']} conversations "
        f"({report['n_users']} users; scores {how}); cross terms hold "
        f"{100 * report['cross_share']:.0f}% of the users' spread",
    ]
    for c in sorted(report["columns"], key=lambda c: -c["share"]):
        users = ", ".join(f"{u['user']} ({u['weight']:.2f})" for u in c["top_users"][:n])
        lines.append("")
        lines.append(
            f"column {c['column']}: {100 * c['share']:.0f}% of the users' spread, "
            f"population weight {c['population_weight']:.2f}, score std {c['score_std']:.3g}"
        )
        if users:
            lines.append(f"  users leaning on it most: {users}")
        for label, key in (("highest", "highest"), ("lowest", "lowest")):
            for t in c[key][:n]:
                lines.append(
                    f"  {label} {t['score']:+.3g}  [{t['text_id']}] {t['prompt']!r} -> "
                    f"{t['response']!r}"
                )
    return "\n".join(lines) + "\n"
