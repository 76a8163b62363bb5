"""Which comparisons to ask a user next: greedy active selection (issue #9).

A candidate question is an unlabelled pair for one user; its orientation is irrelevant. With
``z = x @ V`` the pair's projected feature (K,), the user's mean weights ``w`` and logit
covariance ``S`` (the Laplace posterior of :mod:`lore_rm.fit.posterior`), the margin is
``m = scale * z . w``, ``p = sigmoid(m)`` and ``g = dm/dtheta`` (the softmax Jacobian at ``w``).
The Bradley–Terry Fisher information of the question is ``p (1 - p) g g^T``, the same for
either answer and either orientation.

Criteria (``CRITERIA``):

* ``"information"`` (default): D-optimal. A question's gain is the expected information on
  the logits under the Laplace approximation, ``0.5 log det(H + c g g^T) - 0.5 log det(H) =
  0.5 log(1 + c g^T S g)`` with ``c = p (1 - p)`` at the mean weights. After each pick ``S``
  gets the rank-1 Sherman–Morrison update, so the next pick is conditioned on the earlier
  ones (the Fisher information needs no answer). Gains are in nats.
* ``"uncertainty"``: the largest margin variance ``g^T S g`` under the given posterior (the
  classic baseline: no update within a batch).
* ``"random"``: uniformly at random (seeded), without replacement.

Near-duplicates: two candidates of a user are near-duplicates when the model sees almost the
same question, ``min(|z_a - z_b|, |z_a + z_b|) <= duplicate_tol * max(|z_a|, |z_b|)`` (the
same pair listed twice, in either orientation, always is). After a pick, its near-duplicates
are no longer eligible, under every criterion. The rule compares ``z`` rather than ``g``:
``g`` lies in the (K - 1)-dimensional space orthogonal to the all-ones direction, so at
K = 2 every ``g`` is parallel to every other.

Ties (e.g. K = 1, where the weights are fixed and every gain is 0) go to the lowest row. All
users are handled at once: candidates are laid out as (users, slots) with padding, and the
Python loop is over the ``n`` greedy steps. Near-duplicates are found lazily: a step checks
each user's best candidate against what they were asked, and re-picks (for those users
only) while it is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lore_rm.errors import LoreError

Tensor = torch.Tensor
CRITERIA = ("information", "uncertainty", "random")
DUPLICATE_TOL = 0.02


@dataclass(frozen=True)
class QuestionSelection:
    """Questions chosen for each user, in the order to ask them.

    ``rows`` (U, n) holds row indices into the candidates, ``-1`` past the end of a user's
    list (fewer than ``n`` eligible candidates); ``scores`` (U, n) the criterion's value of
    each pick when it was made (``nan`` at padding; random: 0). ``users[i]`` owns row ``i``.
    """

    users: list[str]
    rows: Tensor
    scores: Tensor
    criterion: str

    @property
    def counts(self) -> Tensor:
        """How many questions each user got (U,)."""
        return (self.rows >= 0).sum(1)

    def flat(self) -> Tensor:
        """Every chosen row index, user by user and in asking order within a user."""
        return self.rows[self.rows >= 0]

    def to_dict(self) -> dict[str, list[int]]:
        """``{user: [row, ...]}`` for the users with at least one question."""
        return {
            u: [r for r in row if r >= 0]
            for u, row in zip(self.users, self.rows.tolist(), strict=True)
            if row and row[0] >= 0
        }


def slot_layout(user_index: Tensor, n_users: int) -> tuple[Tensor, Tensor, bool]:
    """Rows grouped by user: ``slots`` (U, C) of row indices, ``-1`` padded, the mask, and
    whether the rows were already in that layout (grouped, as many per user).

    Within a user, rows keep their order.
    """
    n = user_index.numel()
    counts = torch.bincount(user_index, minlength=n_users)
    width = int(counts.max()) if n else 0
    grouped = n > 0 and bool((user_index[1:] >= user_index[:-1]).all())
    if grouped and width * n_users == n:
        slots = torch.arange(n).view(n_users, width)
        return slots, torch.ones(slots.shape, dtype=torch.bool), True
    if grouped:
        order, users = torch.arange(n), user_index  # no sort needed
    else:
        order = torch.argsort(user_index, stable=True)
        users = user_index[order]
    position = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[users]
    slots = torch.full((n_users, width), -1, dtype=torch.int64)
    slots[users, position] = order
    return slots, slots >= 0, False


def select(
    z: Tensor,
    user_index: Tensor,
    weights: Tensor,
    covariance: Tensor,
    n: int,
    *,
    scale: float = 1.0,
    criterion: str = "information",
    generator: torch.Generator | None = None,
    duplicate_tol: float = DUPLICATE_TOL,
    asked: tuple[Tensor, Tensor] | None = None,
    space: str = "simplex",
) -> tuple[Tensor, Tensor]:
    """Greedy choice of up to ``n`` rows per user: ``(rows, scores)``, both (U, n).

    ``z`` (N, K) are the candidates' projected features, ``user_index`` (N,) their user
    (0..U-1), ``weights`` (U, K) and ``covariance`` (U, K, K) each user's mean weights and
    logit covariance. ``asked`` = ``(z, user_index)`` of questions already asked: their
    near-duplicates are not eligible. Works in ``z``'s precision (float32 or float64).
    """
    if criterion not in CRITERIA:
        raise LoreError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if n < 0:
        raise LoreError(f"n must be >= 0, got {n}")
    if not duplicate_tol >= 0:
        raise LoreError(f"duplicate_tol must be >= 0, got {duplicate_tol}")
    n_users, k = weights.shape
    if covariance.shape != (n_users, k, k):
        raise LoreError(f"covariance must have shape ({n_users}, {k}, {k}), got {covariance.shape}")
    dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
    slots, eligible, full = slot_layout(user_index.cpu(), n_users)
    rows = torch.full((n_users, n), -1, dtype=torch.int64)
    scores = torch.full((n_users, n), float("nan"), dtype=torch.float64)
    if n == 0 or slots.shape[1] == 0:
        return rows, scores

    z = z.to(dtype).cpu()
    zs = z.view(*slots.shape, k) if full else z[slots.clamp_min(0)]  # (U, C, K)
    w = weights.to(torch.float64).cpu()
    cov = covariance.to(torch.float64).cpu().clone()
    if criterion == "random":
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        key = torch.rand(slots.shape, generator=gen, dtype=dtype)
    else:
        # m = z . w and g = dm/dtheta: scale * w * (z - z . w / mass) through the softmax,
        # scale * z for signed weights
        m = torch.bmm(zs, w.to(dtype)[:, :, None])  # (U, C, 1)
        if space == "simplex":
            g = zs - m / w.sum(-1).clamp_min(1e-30).to(dtype)[:, None, None]
            g *= (scale * w).to(dtype)[:, None, :]
        else:
            g = scale * zs
        if criterion == "information":
            # g scaled by sqrt(p (1 - p)) (symmetric in the orientation): its S-norm is the
            # gain's c g^T S g, and the Sherman–Morrison update below needs nothing else
            margin = scale * m
            g *= (torch.sigmoid(margin) * torch.sigmoid(-margin)).sqrt_()
        key = (torch.bmm(g, cov.to(dtype)) * g).sum(-1).clamp_min_(0.0)  # g^T S g
    if not full:
        key.masked_fill_(~eligible, float("-inf"))  # picks and skipped slots join them
    taken = _Taken(zs, asked, n_users, n)
    everyone = torch.arange(n_users)
    for step in range(n):
        pick, has = taken.next_pick(key, duplicate_tol)
        best = key[everyone, pick]
        rows[:, step] = torch.where(has, slots[everyone, pick], -1)
        value = {"information": 0.5 * torch.log1p(best.clamp_min(0.0)), "uncertainty": best}
        scores[:, step] = torch.where(has, value.get(criterion, torch.zeros(())), torch.nan)
        if not bool(has.any()):
            break
        key[everyone[has], pick[has]] = float("-inf")
        taken.add(pick, has)
        if criterion == "information":
            # Sherman–Morrison with v = S g / sqrt(1 + g^T S g) (g Fisher-scaled):
            # S <- S - v v^T, and every candidate's g^T S g drops by (g . v)^2
            sg = torch.bmm(cov, g[everyone, pick].to(cov.dtype)[:, :, None])[..., 0]
            v = sg / (1 + best.to(cov.dtype).clamp_min(0.0)).sqrt()[:, None]
            v = torch.where(has[:, None], v, 0.0)
            cov -= v[:, :, None] * v[:, None, :]
            proj = torch.bmm(g, v.to(dtype)[:, :, None])[..., 0]
            key.addcmul_(proj, proj, value=-1.0)
    return rows, scores


class _Taken:
    """Each user's questions asked so far (before and during this selection), to skip their
    near-duplicates lazily: only a user's best remaining candidate is ever checked."""

    def __init__(self, zs: Tensor, asked: tuple[Tensor, Tensor] | None, n_users: int, n: int):
        self.zs = zs
        k = zs.shape[-1]
        none = torch.zeros(n_users, 0, dtype=torch.bool)
        before = (torch.zeros(n_users, 0, k, dtype=zs.dtype), none)
        if asked is not None and asked[0].shape[0]:
            slots, present, _ = slot_layout(asked[1].cpu(), n_users)
            before = (asked[0].to(zs.dtype).cpu()[slots.clamp_min(0)], present)
        self.start = before[0].shape[1]
        self.z = torch.cat([before[0], torch.zeros(n_users, n, k, dtype=zs.dtype)], 1)
        self.mask = torch.cat([before[1], torch.zeros(n_users, n, dtype=torch.bool)], 1)
        self.count = 0

    def add(self, pick: Tensor, has: Tensor) -> None:
        col = self.start + self.count
        self.z[:, col] = self.zs[torch.arange(pick.numel()), pick]
        self.mask[:, col] = has
        self.count += 1

    def next_pick(self, key: Tensor, tol: float) -> tuple[Tensor, Tensor]:
        """Each user's best slot that is no near-duplicate of a taken question, and whether
        they have one; slots found to be near-duplicates get key -inf."""
        pick = key.argmax(dim=1)  # the first of equal maxima: ties go to the lowest row
        has = torch.isfinite(key[torch.arange(key.shape[0]), pick])
        width = self.start + self.count
        check = has.nonzero().flatten()
        while width and check.numel():
            p = pick[check]
            zp = self.zs[check, p]
            nz = zp.norm(dim=-1)
            tz, mask = self.z[check, :width], self.mask[check, :width]
            apart = torch.minimum((tz - zp[:, None]).norm(dim=-1), (tz + zp[:, None]).norm(dim=-1))
            near = (apart <= tol * torch.maximum(tz.norm(dim=-1), nz[:, None])) & mask
            check = check[near.any(1)]
            if not check.numel():
                break
            key[check, pick[check]] = float("-inf")
            pick[check] = key[check].argmax(dim=1)
            has[check] = torch.isfinite(key[check, pick[check]])
            check = check[has[check]]
        return pick, has
