"""The rank ``lore fit`` would choose, from the searches a rank sweep already ran.

``lore evaluate`` selects its rank by the published protocol's rule (seen users' test
accuracy, :func:`lore_rm.evaluate.protocols.select_rank`). ``lore fit`` (``rank="auto"``)
chooses by cross-validation: the held-out users' log-loss under the one-standard-error rule
(:mod:`lore_rm.fit.selection`). Every rank of the sweep was fitted with its own ridge search,
over the same folds as ``rank="auto"`` uses, so pooling their cells and applying that rule
gives the cross-validated choice without fitting anything again.
"""

from __future__ import annotations

from lore_rm.fit.selection import choose_cell

WHY_THEY_DIFFER = (
    "the published rule scores held-out prompts of the users the basis was fitted on; the "
    "cross-validation scores users the basis never saw, as new users are"
)


def cross_validated_rank(models: dict, alpha: float) -> dict | None:
    """``lore fit``'s choice among the swept ranks (``models``: (rank, alpha) -> fitted
    model) at ``alpha``: rank, weight_decay, rule and the cell's cross-validated log-loss;
    None when a rank was fitted without a search (its ridge given, or the paper recipe)."""
    rows: dict[tuple, dict] = {}
    for (rank, a), model in sorted(models.items()):
        if a != alpha or rank < 1:
            continue
        selection = model.history_.get("selection")
        if not selection:
            return None
        for row in selection["rows"]:
            rows.setdefault((row["rank"], row["weight_decay"], row.get("weights")), row)
    if not rows:
        return None
    one_se = all(m.config_.one_se for m in models.values() if m.rank_ >= 1)
    chosen, rule = choose_cell(list(rows.values()), one_se)
    if chosen["rank"] > 1 and chosen.get("personalization", 1.0) == 0:
        pooled = [r for r in rows.values() if r["rank"] == 1]
        if pooled:  # zero personalisation is the pooled reward, as in the search
            chosen, rule = choose_cell(pooled, one_se)
    return {
        "rank": int(chosen["rank"]),
        "weight_decay": float(chosen["weight_decay"]),
        "cv_loss": float(chosen["cv_loss"]),
        "rule": rule,
    }
