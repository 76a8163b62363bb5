"""Invariants, for any input hypothesis draws: users' weights stay on the simplex (finite in the
signed space); a shared reward offset changes nothing; every model format version (1–5)
reads back what it holds; a posterior's covariances are symmetric positive definite."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lore_rm import Comparisons, LowRankReward
from lore_rm.fit.prior import LogitPrior

FAST = {"n_iter": 40, "fewshot_n_iter": 40}


def comparisons(seed: int, n_users: int, per_user: int, d: int, prefix: str = "u"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_users * per_user, d, generator=gen)
    users = [f"{prefix}{i % n_users}" for i in range(n_users * per_user)]
    return Comparisons.from_features(x, users)


def random_model(seed: int, d: int, k: int, n_users: int, space: str = "simplex", **kw):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_users, k, generator=gen)
    weights = torch.softmax(logits, -1) if space == "simplex" else logits
    return LowRankReward.from_arrays(
        torch.randn(d, k, generator=gen),
        weights,
        [f"u{i}" for i in range(n_users)],
        weight_space=space,
        **kw,
    )


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 4),
    n_users=st.integers(1, 6),
    per_user=st.integers(1, 8),
    space=st.sampled_from(["simplex", "signed"]),
)
def test_weights_stay_on_the_simplex_or_finite_when_signed(seed, k, n_users, per_user, space):
    d = k + 3
    data = comparisons(seed, n_users, per_user, d)
    fitted = LowRankReward(rank=k, weight_decay=0.1, weights=space, **FAST).fit(data)
    model = random_model(seed, d, fitted.n_components_, 3, space, fewshot_prior=1.0)
    model.personalize(comparisons(seed + 1, 4, per_user, d, prefix="new"))
    for w in (fitted.user_weights_, model.user_weights_):
        assert bool(torch.isfinite(w).all())
        if fitted.weight_space_ == "simplex" and space == "simplex":
            assert bool((w >= 0).all())
            torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0]), rtol=0, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    offset=st.lists(st.integers(-40, 40), min_size=5, max_size=5),
    recipe=st.sampled_from(["default", "paper"]),
)
def test_a_shared_reward_offset_changes_nothing(seed, offset, recipe):
    """Every text's embedding moved by the same vector: a shared reward offset. Differences are
    what the fit sees (exact here: embeddings on a 2**-10 grid, integer offsets), so the
    fitted model and every user's ranking of any candidates are the same."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.round(torch.randn(40, 5, generator=gen) * 1024) / 1024
    chosen, rejected = torch.randint(0, 40, (2, 90), generator=gen)
    keep = chosen != rejected
    users = [f"u{i % 6}" for i in range(int(keep.sum()))]
    shift = torch.tensor(offset, dtype=torch.float32)
    fits = [
        LowRankReward(rank=2, weight_decay=0.1, recipe=recipe, seed=seed, **FAST).fit(
            Comparisons.from_features(t[chosen[keep]] - t[rejected[keep]], users)
        )
        for t in (table, table + shift)
    ]
    assert torch.equal(fits[0].basis_, fits[1].basis_)
    assert torch.equal(fits[0].user_weights_, fits[1].user_weights_)
    candidates = torch.randn(4, 5, generator=gen)
    for model in fits[:1]:
        r = model.reward(candidates, "u0")
        moved = model.reward(candidates + shift, "u0")
        assert torch.equal(torch.argsort(r), torch.argsort(moved))  # the same best-of-N
        diffs = moved - r
        torch.testing.assert_close(diffs, diffs[:1].expand(4), rtol=0, atol=1e-3)


def as_version(folder: Path, version: int) -> None:
    """Rewrite a format-5 folder as lore-rm wrote format ``version`` (1-5)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["format_version"] = version
    if version < 5:
        config.pop("weights")
        config.pop("personalization")
    if version < 4:
        config.pop("margin_scale")
    if version < 3:
        tensors = load_file(folder / "model.safetensors")
        tensors.pop("prior_mean", None)
        tensors.pop("prior_precision", None)
        save_file(tensors, str(folder / "model.safetensors"))
        config.pop("sha256")  # written before the files' hashes were recorded
    if version < 2:
        config["users"] = json.loads((folder / "users.json").read_text())
        config.pop("lore_rm_version")
        (folder / "users.json").unlink()
    path.write_text(json.dumps(config))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 4),
    n_users=st.integers(0, 5),
    version=st.integers(1, 5),
    margin=st.floats(0.1, 10.0),
    strength=st.floats(0.0, 1.0),
    signed=st.booleans(),
    learned=st.booleans(),
    ids=st.lists(st.text(min_size=0, max_size=6), min_size=5, max_size=5, unique=True),
)
def test_every_format_version_reads_back_what_it_holds(
    seed, k, n_users, version, margin, strength, signed, learned, ids
):
    space = "signed" if signed and version == 5 else "simplex"
    gen = torch.Generator().manual_seed(seed)
    prior = None
    if learned and k > 1:
        a = torch.randn(k, k, generator=gen, dtype=torch.float64)
        prior = LogitPrior(torch.randn(k, dtype=torch.float64), a @ a.T + torch.eye(k), "learned")
    weights = torch.randn(n_users, k, generator=gen)
    model = LowRankReward.from_arrays(
        torch.randn(k + 2, k, generator=gen),
        weights if space == "signed" else torch.softmax(weights, -1),
        ids[:n_users],
        margin_scale=margin,
        strength=strength,
        weight_space=space,
        prior=prior,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save_pretrained(Path(tmp) / "m")
        as_version(folder, version)
        back = LowRankReward.from_pretrained(folder)
    assert back.users_ == model.users_
    for name in ("basis_", "user_weights_", "population_weights_"):
        assert torch.equal(getattr(back, name), getattr(model, name)), name
    assert back.margin_scale_ == (margin if version >= 4 else 1.0)
    assert back.personalization_ == (strength if version == 5 else 1.0)
    assert back.weight_space_ == space
    if prior is None or version < 3:
        assert back.prior_ is None
    else:
        assert back.prior_ is not None
        torch.testing.assert_close(back.prior_.precision, prior.precision.float().double())


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 5),
    per_user=st.integers(0, 12),
    strength=st.floats(0.01, 10.0),
    hessian=st.sampled_from(["gauss-newton", "exact"]),
    space=st.sampled_from(["simplex", "signed"]),
)
def test_posterior_covariances_are_symmetric_positive_definite(
    seed, k, per_user, strength, hessian, space
):
    model = random_model(seed, 6, k, 4, space, fewshot_prior=strength)
    data = comparisons(seed, 4, per_user, 6) if per_user else None
    post = model.weights_posterior(data, users=["u0", "u1", "u2", "u3"], hessian=hessian)
    cov = post.covariance
    assert cov.shape == (4, k, k)
    torch.testing.assert_close(cov, cov.transpose(1, 2), rtol=1e-9, atol=1e-12)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    assert bool((post.weights_std() >= 0).all())
