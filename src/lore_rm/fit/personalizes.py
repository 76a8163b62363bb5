"""Whether a fitted model personalises, and why not when it does not, in words."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from lore_rm.fit.model import LowRankReward


def does_not_personalize(model: LowRankReward) -> str | None:
    """Why the model serves every user the same reward, or None when it personalises."""
    if model.rank_ == 0:
        return "rank 0 is the reference head: every user gets the backbone's own reward"
    sel = model.history_.get("selection") or {}
    if model.n_components_ <= 1:
        zero = sel.get("zero_personalization")
        if zero and zero.get("reason") == "pooled":
            return (
                f"no measurable gain: at rank {zero['rank']} the cross-validation scored the "
                "pooled reward within one standard error of the personalised model, so every "
                f"user gets the pooled reward (rank 1){_evidence(sel)}"
            )
        if zero:
            return (
                "no measurable gain: the cross-validation found no strength at which users' "
                f"own weights at rank {zero['rank']} beat the shared ones, so every user gets "
                f"the pooled reward (rank 1){_evidence(sel)}"
            )
        if any(r["rank"] > 1 for r in sel.get("rows", [])):
            return (
                "no measurable gain: the cross-validation chose one pooled reward (rank 1) "
                f"over the personalised ranks, so every user gets the same reward{_evidence(sel)}"
            )
        return "rank 1 is one pooled reward: every user gets the same reward"
    if model.personalization_ == 0:
        return (
            "personalisation strength 0: users' own weights did not beat the shared ones, so "
            "every user is served the shared reward"
        )
    return None


def _evidence(sel: dict) -> str:
    """The cross-validated log-loss of the pooled choice against the best personalised cell,
    at the strength the search gave it and with users' own weights."""
    rows = sel.get("rows", [])
    chosen = next((r for r in rows if r.get("chosen")), None)
    others = [r for r in rows if r["rank"] > 1]
    if chosen is None or not others:
        return ""
    best = min(others, key=lambda r: r["cv_loss"])
    lam = float(best.get("personalization", 1.0))
    own = (best.get("strengths") or {}).get("1", {}).get("cv_loss")
    return (
        f" (cross-validated log-loss {chosen['cv_loss']:.4f} ± {chosen['cv_loss_se']:.4f}; "
        f"rank {best['rank']}, ridge {best['weight_decay']:g}: {best['cv_loss']:.4f} at "
        f"strength {lam:g}"
        + (f", {own:.4f} with users' own weights" if own is not None and lam != 1.0 else "")
        + ")"
    )
