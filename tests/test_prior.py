"""The few-shot prior: learned from the seen users (empirical Bayes) or isotropic."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lore_rm import Comparisons, FitConfig, LowRankReward
from lore_rm.constants import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE
from lore_rm.errors import LoreError, ModelFormatError
from lore_rm.fit.empirical_bayes import learn_prior
from lore_rm.fit.prior import centred_logits, isotropic_prior, moment_prior


def planted(mean, cov, n_users=400, per_user=60, d=12, seed=0):
    """Comparisons of users whose logits are drawn from N(mean, cov) over a known basis."""
    g = torch.Generator().manual_seed(seed)
    k = len(mean)
    basis = torch.randn(d, k, generator=g, dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))
    logits = (
        torch.as_tensor(mean, dtype=torch.float64)
        + torch.randn(n_users, k, generator=g, dtype=torch.float64) @ chol.T
    )
    weights = logits.softmax(-1)
    n = n_users * per_user
    users = torch.arange(n_users).repeat_interleave(per_user)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    margin = 3.0 * ((x @ basis) * weights[users]).sum(-1)
    flip = torch.rand(n, generator=g, dtype=torch.float64) > torch.sigmoid(margin)
    x[flip] = -x[flip]
    data = Comparisons.from_features(
        x.float(), users.numpy(), user_ids=[f"u{i}" for i in range(n_users)]
    )
    return data, basis.float(), weights.float()


def test_em_recovers_a_planted_prior():
    """With many users, the learned logistic normal matches the one the logits came from
    (on the centred subspace, where it is defined), from noisy per-user estimates."""
    mean = [1.0, 0.0, -1.0]
    cov = [[1.5, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]]
    data, basis, true_w = planted(mean, cov)
    cfg = FitConfig.for_recipe("default", scale=3.0)
    start = true_w.mean(0)
    noisy = torch.rand_like(true_w) * 0.2 + true_w  # a rough start, as a joint fit gives
    prior, history = learn_prior(data, basis, 3.0, cfg, noisy / noisy.sum(1, keepdim=True), start)
    c = torch.eye(3, dtype=torch.float64) - 1 / 3
    want = c @ torch.tensor(cov, dtype=torch.float64) @ c
    got = c @ prior.covariance() @ c
    # the Laplace approximation costs some accuracy (measured: 0.22-0.26 relative error with 60
    # to 200 comparisons per user, against 0.12 for the sample covariance of the true logits)
    assert float(torch.linalg.norm(got - want) / torch.linalg.norm(want)) < 0.3
    torch.testing.assert_close(
        prior.mean, c @ torch.tensor(mean, dtype=torch.float64), atol=0.25, rtol=0
    )
    assert 1 <= history["em_iterations"] <= 20 and history["users"] == 400
    # the raw spread of the per-user MAPs understates it (shrinkage) or overstates it (noise);
    # EM puts the posterior covariances back: the learned prior is closer than the spread
    from lore_rm.fit.solvers import fit_user_weights

    maps = fit_user_weights(data, basis, 3.0, cfg, start, prior=prior)
    raw = c @ moment_prior(centred_logits(maps)).covariance() @ c
    assert float(torch.linalg.norm(got - want)) < float(torch.linalg.norm(raw - want))


def test_fit_learns_the_prior_and_new_users_use_it(easy_rank3, easy_population):
    model = easy_rank3
    assert model.history_["prior"]["kind"] == "learned"
    prior = model.few_shot_prior()
    assert prior.kind == "learned" and prior.k == 3
    assert bool((torch.linalg.eigvalsh(prior.precision) > 0).all())
    torch.testing.assert_close(prior.mean.sum(), torch.tensor(0.0, dtype=torch.float64))
    # an explicit strength brings back the isotropic prior, and changes the fit
    iso = model.copy()
    iso.settings = {**iso.settings, "fewshot_prior": 0.3}
    assert iso.few_shot_prior().kind == "isotropic"
    data = easy_population.split.unseen_fewshot
    ids, learned_w = model.fit_user_weights(data)
    _, iso_w = iso.fit_user_weights(data)
    assert not torch.allclose(learned_w, iso_w)
    # ... equal to a direct call with the isotropic prior
    expected = isotropic_prior(model.population_weights_, 0.3)
    torch.testing.assert_close(iso.few_shot_prior().precision, expected.precision)


def test_one_column_falls_back_to_the_isotropic_prior(easy_population):
    split = easy_population.split
    model = LowRankReward(rank=1).fit(split.seen_train)
    assert model.history_["prior"] == {
        "kind": "isotropic",
        "strength": 0.3,
        "why": "one basis column",
    }
    assert model.few_shot_prior().kind == "isotropic"


def test_save_and_load_keep_the_prior(easy_rank3, tmp_path):
    easy_rank3.save_pretrained(tmp_path / "m")
    loaded = LowRankReward.from_pretrained(tmp_path / "m")
    a, b = easy_rank3.few_shot_prior(), loaded.few_shot_prior()
    assert b.kind == "learned"
    torch.testing.assert_close(a.mean.float().double(), b.mean)
    torch.testing.assert_close(a.precision.float().double(), b.precision)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "prior learned from the 120 seen users" in card


def test_a_folder_without_a_prior_uses_the_isotropic_one(easy_rank3, tmp_path):
    """Folders written before format version 3 hold no prior: their settings name a number."""
    from safetensors.torch import load_file, save_file

    folder = easy_rank3.save_pretrained(tmp_path / "m")
    tensors = load_file(folder / MODEL_WEIGHTS_FILE)
    del tensors["prior_mean"], tensors["prior_precision"]
    save_file(tensors, str(folder / MODEL_WEIGHTS_FILE))
    config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    config["format_version"] = 2
    del config["sha256"]  # written before the files' hashes were recorded
    config["fit_config"]["fewshot_prior"] = 0.3
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(config))
    loaded = LowRankReward.from_pretrained(folder)
    assert loaded.prior_ is None and loaded.few_shot_prior().kind == "isotropic"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("prior_precision"), "without prior_precision"),
        (lambda t: t.update(prior_mean=torch.zeros(2)), "expected \\(3,\\)"),
        (lambda t: t.update(prior_precision=-torch.eye(3)), "not symmetric positive definite"),
    ],
)
def test_a_tampered_prior_is_refused(easy_rank3, tmp_path, change, message):
    from safetensors.torch import load_file, save_file

    folder = easy_rank3.save_pretrained(tmp_path / "m")
    tensors = load_file(folder / MODEL_WEIGHTS_FILE)
    change(tensors)
    save_file(tensors, str(folder / MODEL_WEIGHTS_FILE))
    with pytest.raises(ModelFormatError, match=message):
        LowRankReward.from_pretrained(folder)


def test_bad_prior_settings_are_refused():
    for bad in (-1.0, float("nan"), "lerned", True):
        with pytest.raises(LoreError, match="fewshot_prior must be 'learned' or a non-negative"):
            FitConfig.for_recipe("default", fewshot_prior=bad)
    assert FitConfig.for_recipe("default").fewshot_prior == "learned"
    assert FitConfig.for_recipe("paper").fewshot_prior == 0.0


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.lists(st.floats(-6, 6), min_size=3, max_size=3), min_size=2, max_size=40),
    st.floats(-50, 50),
)
def test_moment_prior_is_centred_positive_definite_and_offset_free(rows, offset):
    """Any logits give a usable prior, and a shared offset (which moves no weight) changes
    nothing."""
    x = torch.tensor(rows, dtype=torch.float64)
    centred = x - x.mean(1, keepdim=True)
    spread = float((centred - centred[0]).abs().max())
    # a spread below float64's resolution at the offset's scale (a denormal row, say) is
    # lost when the offset is added: such rows are "all alike" for the offset's half
    assume(spread == 0 or spread > 1e-9)
    try:
        a = moment_prior(x)
        b = moment_prior(x + offset)  # the offset's rounding can erase a spread of 1e-16
    except LoreError:  # every row alike on the centred subspace: no spread to learn
        assert spread < 1e-6
        return
    assert abs(float(a.mean.sum())) < 1e-9
    assert bool((torch.linalg.eigvalsh(a.precision) > 0).all())
    torch.testing.assert_close(a.mean, b.mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(a.precision, b.precision, atol=1e-6, rtol=1e-6)
