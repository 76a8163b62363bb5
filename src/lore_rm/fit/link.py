"""The two weight spaces: simplex weights ``softmax(theta)`` and signed weights ``theta``.

* ``"simplex"`` (LoRe's): a user's weights are ``w = softmax(theta)``, a point of the
  probability simplex over the K basis columns; the parameters are logits, defined up to a
  shared offset (the all-ones direction moves no weight).
* ``"signed"``: ``w = theta``, any real vector: the population's mean weights plus a signed
  offset per user, so a user can weigh a basis column negatively (want the opposite of it).

Every fit, posterior and question-selection step goes through these three maps, so both
spaces share one implementation.
"""

from __future__ import annotations

from typing import Literal

import torch

from lore_rm.errors import LoreError

Tensor = torch.Tensor
WeightSpace = Literal["simplex", "signed"]
WEIGHT_SPACES = ("simplex", "signed")
#: simplex logits are clipped to this magnitude: a weight of 1e-6 and one of 1e-12 are the
#: same answer, and unclipped they would dominate a covariance
LOGIT_CLIP = 8.0


def check_space(space: str) -> WeightSpace:
    if space not in WEIGHT_SPACES:
        raise LoreError(f"weight space must be one of {WEIGHT_SPACES}, got {space!r}")
    return space  # type: ignore[return-value]


def weights_of(params: Tensor, space: str) -> Tensor:
    """Weights (..., K) from parameters (..., K)."""
    return params.softmax(dim=-1) if space == "simplex" else params


def params_of(weights: Tensor, space: str) -> Tensor:
    """Parameters (..., K) whose weights are ``weights``: centred, clipped logits of the
    weights renormalised (simplex), or the weights themselves (signed). float64."""
    w = weights.to(torch.float64)
    if space != "simplex":
        return w.clone()
    w = w.clamp_min(1e-12)
    lg = (w / w.sum(-1, keepdim=True)).log()
    lg = (lg - lg.mean(-1, keepdim=True)).clamp(-LOGIT_CLIP, LOGIT_CLIP)
    return lg - lg.mean(-1, keepdim=True)


def weight_gradient(y: Tensor, weights: Tensor, space: str) -> Tensor:
    """``d(y @ w(theta)) / d theta`` (..., K) for rows ``y`` and weights ``w`` (broadcast).

    Simplex (``w = s * softmax(theta)``, ``s`` the row's mass, 1 unless pruned):
    ``w * (y - p_w . y)`` with ``p_w = w / s``; signed: ``y``."""
    if space != "simplex":
        return y.expand(torch.broadcast_shapes(y.shape, weights.shape))
    mass = weights.sum(-1, keepdim=True).clamp_min(1e-30)
    return weights * (y - (weights * y).sum(-1, keepdim=True) / mass)


def joint_weights(params: Tensor, space: str, present: Tensor | None = None) -> Tensor:
    """Users' weights (..., U, K) from the joint fit's parameters (..., U, K).

    Simplex: ``softmax``. Signed: ``e_1 + delta_u - mean(delta)``, the mean over the
    ``present`` users (..., U) (those with rows; default every user): the population's mean
    weights are pinned to the first unit vector, so the first basis column is the shared
    reward and the others, with each user's offset, the personal part. Pinning the mean
    fixes the scale the ridge on the basis would otherwise trade against the weights'.
    """
    if space == "simplex":
        return params.softmax(dim=-1)
    if present is None:
        mean = params.mean(dim=-2, keepdim=True)
    else:
        mask = present.to(params.dtype)[..., None]
        mean = (params * mask).sum(-2, keepdim=True) / mask.sum(-2, keepdim=True).clamp_min(1)
    first = torch.zeros(params.shape[-1], dtype=params.dtype, device=params.device)
    first[0] = 1.0
    return first + params - mean


def joint_params(weights: Tensor, space: str) -> Tensor:
    """Parameters of the joint fit whose weights are ``weights`` (U, K) (simplex: centred
    logits; signed: the offsets from the first unit vector)."""
    if space == "simplex":
        return params_of(weights, space).to(weights.dtype)
    first = torch.zeros(weights.shape[-1], dtype=weights.dtype, device=weights.device)
    first[0] = 1.0
    return weights - first
