"""How much personalisation pays: the shared model against each user's own weights.

For seen users (their held-out prompts) and for new users (after a few-shot fit on ``shots``
comparisons each) the report compares, user by user on the same test comparisons:

* ``pooled``: one Bradley–Terry reward for everyone (a rank-1 fit);
* ``shared``: the model's basis at the population's mean weights (what an unknown user gets);
* ``personal``: each user's own weights, at the model's personalisation strength;
* ``reference``: the backbone's reward head, where there is one.

The gain is the per-user paired difference ``personal - shared``; its 95% interval is a
percentile bootstrap over users (:func:`lore_rm.metrics.bootstrap_mean`). Each group also
gets the distribution of per-user accuracy (mean, median, 10th percentile, bottom-decile mean)
and the gain of the users the shared model serves worst (its bottom decile). One plain
sentence says what the figures mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.evaluate.shots import sample_shots
from lore_rm.fit.model import LowRankReward
from lore_rm.fit.personalizes import does_not_personalize
from lore_rm.metrics import MeanInterval, bootstrap_mean, per_user_accuracy
from lore_rm.protocol import ProtocolSplit

Tensor = torch.Tensor
VARIANTS = ("reference", "pooled", "shared", "personal")


@dataclass
class GroupReport:
    """One group of users (seen users, or new users after ``shots`` comparisons each)."""

    group: str  # "seen" or "new"
    shots: int | None  # new users: comparisons used per user (None: their whole pool)
    users: int
    accuracy: dict[str, float]  # variant -> mean over users
    gain: dict  # personal - shared: MeanInterval.to_dict()
    gain_over_pooled: dict  # personal - pooled
    distribution: dict[str, float]  # personal: mean, median, p10, bottom_decile_mean
    bottom_decile_gain: float  # mean gain of the users the shared model serves worst
    worse_than_shared: list[str]  # users whose own weights score below the shared model
    sentence: str

    @property
    def label(self) -> str:
        if self.group == "seen":
            return "seen users (held-out prompts)"
        return f"new users, {'all' if self.shots is None else self.shots} comparisons"


@dataclass
class PersonalizationReport:
    """Everything :func:`personalization_report` measured (``to_dict`` for JSON)."""

    personalizes: bool
    why: str  # what the model does with users' weights, in words
    strength: float
    groups: list[GroupReport]
    per_user: list[dict] = field(default_factory=list)
    summary: str = ""

    def to_dict(self, *, per_user: bool = False) -> dict:
        d = asdict(self)
        if not per_user:
            d.pop("per_user")
        return d


def pooled_model(model: LowRankReward, split: ProtocolSplit) -> LowRankReward | None:
    """The rank-1 model to compare ``model`` with, fitted on ``split.seen_train`` at the
    ridge the model's search found best for rank 1 (no second search), or at the model's
    own ridge; None when ``model`` itself has rank 1 or less."""
    if model.rank_ <= 1:
        return None
    sel = model.history_.get("selection") or {}
    pooled_cell = sel.get("pooled")
    decay = pooled_cell["weight_decay"] if pooled_cell else model.config_.weight_decay
    settings = {**model.settings, "weight_decay": decay, "weights": "simplex"}
    settings.pop("rank", None)
    pooled = LowRankReward(rank=1, recipe=model.recipe, seed=model.seed, **settings)
    return pooled.fit(split.seen_train, split.reference_head)


def personalization_report(
    model: LowRankReward,
    split: ProtocolSplit,
    *,
    pooled: LowRankReward | None = None,
    shots: Sequence[int | None] = (None,),
    trials: int = 5,
    seed: int = 0,
    n_boot: int = 2000,
) -> PersonalizationReport:
    """The report for ``model`` (fitted on ``split.seen_train``) on the split's test roles.

    ``pooled``: a rank-1 model fitted on the same data (fitted here when not given and the
    model's rank is above 1). ``shots``: per-user few-shot budgets of the new-user groups
    (``None``: each new user's whole few-shot pool); each budget is drawn ``trials`` times
    and every user's accuracy averaged over the draws.
    """
    if pooled is None and model.rank_ > 1:
        pooled = LowRankReward(rank=1, recipe=model.recipe, seed=model.seed, **model.settings)
        pooled.fit(split.seen_train, split.reference_head)
    elif pooled is None:
        pooled = model
    reference = _reference_scorer(split)
    groups, per_user = [], []
    if split.seen_test.n:
        acc = _variants(model, pooled, reference, split.seen_test, model)
        groups.append(_group("seen", None, split.seen_test, acc, n_boot, seed))
        per_user += _rows("seen", None, split.seen_test, acc)
    if split.unseen_test.n:
        gen = torch.Generator().manual_seed(seed)
        for s in shots:
            draws = 1 if s is None else trials
            runs = []
            for _ in range(draws):
                few = (
                    split.unseen_fewshot
                    if s is None
                    else sample_shots(split.unseen_fewshot, s, gen)
                )
                new = model.copy().personalize(few) if few.n else model
                runs.append(_variants(new, pooled, reference, split.unseen_test, new))
            acc = {k: torch.stack([r[k] for r in runs]).nanmean(0) for k in runs[0]}
            groups.append(_group("new", s, split.unseen_test, acc, n_boot, seed))
            per_user += _rows("new", s, split.unseen_test, acc)
    why = does_not_personalize(model)
    report = PersonalizationReport(
        personalizes=why is None,
        why=why or f"each user's own weights at strength {model.personalization_:g}",
        strength=float(model.personalization_),
        groups=groups,
        per_user=per_user,
    )
    report.summary = summary_sentence(report)
    return report


def _reference_scorer(split: ProtocolSplit):
    head = split.reference_head
    if head is None:
        return None
    v = torch.as_tensor(head, dtype=torch.float32).reshape(-1, 1)
    return lambda data: data.to(dtype=torch.float32).project(v)[:, 0].cpu()


def _variants(model, pooled, reference, data: Comparisons, personal) -> dict[str, Tensor]:
    """Per-user accuracy (U,) of every variant on ``data`` (NaN for users without rows)."""
    ids = list(data.user_ids)
    out = {
        "pooled": per_user_accuracy(pooled.margins(data, unknown="mean"), data),
        "shared": per_user_accuracy(
            personal.margins(data, unknown="mean", personalization=0.0), data
        ),
        "personal": per_user_accuracy(personal.margins(data, unknown="mean"), data),
    }
    if reference is not None:
        out["reference"] = per_user_accuracy(reference(data), data)
    assert all(v.shape[0] == len(ids) for v in out.values())
    return out


def _group(
    group: str, shots: int | None, data: Comparisons, acc: dict[str, Tensor], n_boot: int, seed: int
) -> GroupReport:
    has = ~torch.isnan(acc["personal"])
    ids = [u for u, h in zip(data.user_ids, has.tolist(), strict=True) if h]
    a = {k: v[has].double() for k, v in acc.items()}
    diff = a["personal"] - a["shared"]
    gain = bootstrap_mean(diff, n_boot=n_boot, seed=seed)
    over_pooled = bootstrap_mean(a["personal"] - a["pooled"], n_boot=n_boot, seed=seed + 1)
    shared_order = torch.argsort(a["shared"], stable=True)
    decile = shared_order[: max(1, math.ceil(0.1 * len(ids)))] if ids else shared_order
    personal = a["personal"]
    report = GroupReport(
        group=group,
        shots=shots,
        users=len(ids),
        accuracy={k: float(v.mean()) for k, v in a.items() if k in VARIANTS},
        gain=gain.to_dict(),
        gain_over_pooled=over_pooled.to_dict(),
        distribution=_distribution(personal),
        bottom_decile_gain=float(diff[decile].mean()) if ids else math.nan,
        worse_than_shared=[u for u, d in zip(ids, diff.tolist(), strict=True) if d < 0],
        sentence="",
    )
    report.sentence = gain_sentence(report.label, gain)
    return report


def _distribution(acc: Tensor) -> dict[str, float]:
    if not acc.numel():
        return {k: math.nan for k in ("mean", "median", "p10", "bottom_decile_mean")}
    low = torch.sort(acc).values[: max(1, math.ceil(0.1 * acc.numel()))]
    return {
        "mean": float(acc.mean()),
        "median": float(acc.median()),
        "p10": float(torch.quantile(acc, 0.1)),
        "bottom_decile_mean": float(low.mean()),
    }


def _rows(group: str, shots: int | None, data: Comparisons, acc: dict[str, Tensor]) -> list[dict]:
    has = ~torch.isnan(acc["personal"])
    cols = {k: v.tolist() for k, v in acc.items()}
    rows = []
    for i, (u, h) in enumerate(zip(data.user_ids, has.tolist(), strict=True)):
        if h:
            row = {"user": u, "group": group, "shots": shots}
            row.update({k: cols[k][i] for k in VARIANTS if k in cols})
            row["gain"] = cols["personal"][i] - cols["shared"][i]
            rows.append(row)
    return rows


def gain_sentence(label: str, gain: MeanInterval) -> str:
    """One plain sentence about a gain and its interval."""
    if gain.n == 0:
        return f"{label}: no users to measure"
    figure = f"{gain.mean:+.3f} [{gain.lower:+.3f}, {gain.upper:+.3f}]"
    if gain.lower > 0:
        return f"personalisation gains {figure} for {label}"
    if gain.upper < 0:
        return f"personalisation loses {figure} against the shared reward for {label}"
    return f"no measurable gain from personalisation for {label}: {figure}"


def summary_sentence(report: PersonalizationReport) -> str:
    """The report in one sentence: what the model does, and the new users' figure that says
    most (the largest budget), else the seen users'."""
    if not report.personalizes:
        why = report.why
        if why.startswith("no measurable gain: "):
            return (
                "No measurable gain from personalisation: "
                + why[len("no measurable gain: ") :]
                + "."
            )
        return f"This model does not personalise: {why}."
    if not report.groups:
        return "No test comparisons: the gain from personalisation was not measured."
    new = [g for g in report.groups if g.group == "new"]
    g = new[-1] if new else report.groups[0]
    return g.sentence[0].upper() + g.sentence[1:] + "."
