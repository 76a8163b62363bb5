"""Model API: persistence, personalisation, bad input, metrics."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import lore_rm
from lore_rm import (
    Comparisons,
    DataError,
    LoreError,
    LowRankReward,
    ModelFormatError,
    UnknownUserError,
    per_user_accuracy,
)
from lore_rm.evaluate import mean_accuracy, sample_shots


@pytest.fixture(scope="module")
def fitted(easy_rank3):
    model = easy_rank3.copy()
    model.backbone = "sim"
    return model


def test_save_load_round_trip_is_exact(fitted, easy_population, tmp_path):
    split = easy_population.split
    model = fitted.copy().personalize(split.unseen_fewshot)
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "users.json"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["lore_rm_version"] == lore_rm.__version__ and "users" not in config
    loaded = LowRankReward.from_pretrained(tmp_path / "m")
    assert loaded.users_ == model.users_ and loaded.rank == 3 and loaded.backbone == "sim"
    e = split.seen_test.table[:64]
    users = [model.users_[i % len(model.users_)] for i in range(64)]
    assert torch.equal(loaded.reward(e, users), model.reward(e, users))
    assert torch.equal(loaded.margins(split.unseen_test), model.margins(split.unseen_test))
    assert torch.equal(loaded.reference_head_, model.reference_head_)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    k=st.integers(0, 4),
    ids=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True),
    seed=st.integers(0, 10_000),
)
def test_round_trip_any_rank_and_ids(tmp_path_factory, k, ids, seed):
    g = torch.Generator().manual_seed(seed)
    d = 6
    x = torch.randn(40, d, generator=g)
    users = [ids[i % len(ids)] for i in range(40)]
    model = LowRankReward(rank=k, n_iter=5).fit(
        Comparisons.from_features(x, users), reference_head=torch.randn(d, generator=g)
    )
    path = tmp_path_factory.mktemp("rt")
    model.save_pretrained(path)
    loaded = LowRankReward.from_pretrained(path)
    assert loaded.users_ == model.users_
    e = torch.randn(5, d, generator=g)
    assert torch.equal(loaded.reward(e, ids[0]), model.reward(e, ids[0]))


def test_rank_zero_is_the_reference_head_for_everyone(easy_population):
    split = easy_population.split
    model = LowRankReward(rank=0).fit(split.seen_train, split.reference_head)
    e = split.seen_test.table[:10]
    r = model.reward(e, model.users_[0])
    torch.testing.assert_close(r, e @ split.reference_head)
    torch.testing.assert_close(model.reward(e, model.users_[1]), r)


def test_rank_one_gives_every_user_the_same_reward(easy_population):
    split = easy_population.split
    model = LowRankReward(rank=1, n_iter=30).fit(split.seen_train)
    e = split.seen_test.table[:10]
    torch.testing.assert_close(model.reward(e, model.users_[0]), model.reward(e, model.users_[5]))


def test_personalize_adds_new_users_and_refits_seen_ones(fitted, easy_population):
    split = easy_population.split
    model = fitted.copy()
    before = model.user_weights_.clone()
    n_seen = len(model.users_)
    model.personalize(split.unseen_fewshot)
    assert len(model.users_) == n_seen + split.unseen_fewshot.n_users
    assert torch.equal(model.user_weights_[:n_seen], before)  # seen users untouched
    # refitting one seen user from a few comparisons changes only that user
    one = split.seen_train.subset(split.seen_train.user_index == 0)
    model.personalize(one)
    assert not torch.equal(model.user_weights_[0], before[0])
    assert torch.equal(model.user_weights_[1:n_seen], before[1:])


def test_user_without_comparisons_gets_population_mean(fitted):
    model = fitted.copy()
    with pytest.warns(UserWarning, match="no comparisons"):
        model.personalize(
            Comparisons.from_features(torch.zeros(0, model.d_), []), users=["brand-new"]
        )
    w, known = model.weights_for(["brand-new"])
    assert bool(known.all())
    torch.testing.assert_close(w[0], model.population_weights_)


def test_unknown_user_is_an_error_or_the_mean(fitted):
    e = torch.randn(2, fitted.d_)
    with pytest.raises(UnknownUserError, match="nobody"):
        fitted.reward(e, "nobody")
    r = fitted.reward(e, "nobody", unknown="mean")
    w = fitted.population_weights_
    torch.testing.assert_close(r, fitted.reward_scale * (e @ fitted.basis_ @ w))


def test_bad_input_gives_clear_errors(fitted, tmp_path):
    with pytest.raises(DataError, match="empty"):
        LowRankReward(rank=2).fit(Comparisons.from_features(torch.zeros(0, 4), []))
    x = torch.randn(5, 4)
    x[3, 1] = float("nan")
    with pytest.raises(DataError, match="first bad row: 3"):
        Comparisons.from_features(x, list("abcde"))
    x[3, 1] = float("inf")
    with pytest.raises(DataError, match="NaN or inf"):
        Comparisons.from_features(x, list("abcde"))
    with pytest.raises(LoreError, match="larger than the embedding dimension"):
        LowRankReward(rank=5).fit(Comparisons.from_features(torch.randn(5, 4), list("abcde")))
    with pytest.raises(LoreError, match="reference_head"):
        LowRankReward(rank=0).fit(Comparisons.from_features(torch.randn(5, 4), list("abcde")))
    with pytest.raises(DataError, match="d = 7 but the model was fitted on d = 16"):
        fitted.margins(Comparisons.from_features(torch.randn(3, 7), list("abc")))
    with pytest.raises(DataError, match=r"shape \(M, 16\)"):
        fitted.reward(torch.randn(3, 7), "seen-00000")
    with pytest.raises(DataError, match="outside the embedding table"):
        Comparisons.from_pairs(torch.randn(3, 4), [0, 5], [1, 2], ["a", "b"])
    with pytest.raises(LoreError, match="unknown fit setting"):
        LowRankReward(rank=2, learning_rat=3).config  # noqa: B018
    with pytest.raises(LoreError, match="unknown recipe"):
        LowRankReward(rank=2, recipe="magic").config  # noqa: B018
    with pytest.raises(LoreError, match="not fitted"):
        LowRankReward(rank=2).reward(torch.randn(1, 4), "a")


def test_version_1_folders_with_user_ids_in_config_are_still_read(fitted, tmp_path):
    fitted.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["format_version"] = 1
    cfg["users"] = json.loads((tmp_path / "users.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "users.json").unlink()
    loaded = LowRankReward.from_pretrained(tmp_path)
    assert loaded.users_ == fitted.users_
    torch.testing.assert_close(loaded.user_weights_, fitted.user_weights_)
    cfg["users"] = cfg["users"][:-1]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="weight rows"):
        LowRankReward.from_pretrained(tmp_path)


def test_model_folder_of_another_version_is_refused(fitted, tmp_path):
    fitted.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="format version 99"):
        LowRankReward.from_pretrained(tmp_path)
    with pytest.raises(ModelFormatError, match="no config.json"):
        LowRankReward.from_pretrained(tmp_path / "missing")


def test_accuracy_counts_ties_as_wrong():
    c = Comparisons.from_features(torch.zeros(4, 2), ["a", "a", "b", "b"])
    acc = per_user_accuracy(torch.tensor([1.0, 0.0, -1.0, 2.0]), c)
    assert acc.tolist() == [0.5, 0.5]
    mean, std = mean_accuracy(torch.tensor([1.0, 1.0, -1.0, -2.0]), c)
    assert mean == 0.5 and std == 0.5
    c2 = Comparisons.from_features(torch.zeros(1, 2), [0], user_ids=["a", "nobody"])
    assert math.isnan(per_user_accuracy(torch.tensor([1.0]), c2)[1])


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=8),
    shots=st.integers(0, 10),
    seed=st.integers(0, 1000),
)
def test_sample_shots_takes_at_most_shots_per_user(counts, shots, seed):
    assume(sum(counts) > 0)
    users = np.repeat(np.arange(len(counts)), counts)
    c = Comparisons.from_features(
        torch.arange(len(users) * 2.0).reshape(-1, 2),
        users.tolist(),
        user_ids=[str(i) for i in range(len(counts))],
    )
    s = sample_shots(c, shots, torch.Generator().manual_seed(seed))
    got = torch.bincount(s.user_index, minlength=len(counts)).tolist()
    assert got == [min(n, shots) for n in counts]
    # rows are real rows of the original, without repetition
    rows = s.features[:, 0].tolist()
    assert len(set(rows)) == len(rows) and set(rows) <= set(c.features[:, 0].tolist())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    t=st.integers(1, 10),
    d=st.integers(1, 5),
    k=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_table_and_dense_projections_agree(n, t, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(t, d, generator=g, dtype=torch.float64)
    c = torch.randint(t, (n,), generator=g)
    r = torch.randint(t, (n,), generator=g)
    pairs = Comparisons.from_pairs(table, c, r, ["u"] * n)
    dense = Comparisons.from_features(table[c] - table[r], ["u"] * n)
    v = torch.randn(d, k, generator=g, dtype=torch.float64)
    grad = torch.randn(n, k, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pairs.project(v), dense.project(v))
    torch.testing.assert_close(pairs.backproject(grad), dense.backproject(grad))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), shots=st.integers(0, 6))
def test_personalize_sets_what_the_pure_fit_returns(fitted, seed, shots):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(shots * 3, fitted.d_, generator=g)
    users = [f"n{i % 3}" for i in range(shots * 3)]
    comps = Comparisons.from_features(x, users)
    model = fitted.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, pure = fitted.fit_user_weights(comps, users=["n0", "n1", "n2"])
        model.personalize(comps, users=["n0", "n1", "n2"])
    assert "n0" not in fitted.users_  # the pure fit left the model alone
    assert model.users_ == fitted.users_ + ["n0", "n1", "n2"] and sorted(ids) == ["n0", "n1", "n2"]
    torch.testing.assert_close(model.weights_for(ids)[0], pure)
    if shots == 0:  # no comparison: the population's mean weights
        torch.testing.assert_close(pure, fitted.population_weights_.expand(3, -1))


def test_low_precision_inputs_are_accepted(easy_population):
    split = easy_population.split
    data = split.seen_train
    half = Comparisons.from_pairs(
        data.table.to(torch.bfloat16),
        data.chosen,
        data.rejected,
        data.user_index,
        user_ids=data.user_ids,
    )
    model = LowRankReward(rank=3, n_iter=50).fit(half)
    assert model.basis_.dtype == torch.float32
    assert model.score(split.seen_test) > 0.7
    r = model.reward(split.seen_test.table[:4].to(torch.float16), model.users_[0])
    assert r.dtype == torch.float32 and torch.isfinite(r).all()


def test_select_rank_prefers_the_smallest_rank_within_tolerance():
    from lore_rm.evaluate import select_rank

    rows = [
        {"rank": k, "seen_test": a}
        for k, a in [(0, 0.9), (1, 0.70), (2, 0.80), (3, 0.818), (4, 0.815), (6, 0.820)]
    ]
    assert select_rank(rows)["rank"] == 3  # rank 0 (no learning) is never selected
    assert select_rank(rows, tolerance=0.0)["rank"] == 6
    assert select_rank([{"rank": 0, "seen_test": 0.7}]) is None


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=6), min_size=1, max_size=12),
    seed=st.integers(0, 10_000),
)
def test_adding_users_one_batch_at_a_time_matches_a_plain_dict(batches, seed):
    """The kept id index and the grown weight rows agree with a naive model of them."""
    g = torch.Generator().manual_seed(seed)
    caller = torch.eye(3)
    model = LowRankReward.from_arrays(torch.randn(6, 3, generator=g), caller, ["a", "b", "c"])
    expect = {u: torch.eye(3)[i] for i, u in enumerate(["a", "b", "c"])}
    model.set_user_weights(["b"], torch.full((1, 3), 1 / 3))
    expect["b"] = torch.full((3,), 1 / 3)
    for batch in batches:
        ids = [f"u{i}" for i in dict.fromkeys(batch)]
        w = torch.rand(len(ids), 3, generator=g)
        w = w / w.sum(1, keepdim=True)
        model.set_user_weights(ids, w)
        for u, row in zip(ids, w, strict=True):
            expect[u] = row
    assert model.users_ == list(expect)
    got, known = model.weights_for(list(expect))
    assert bool(known.all())
    torch.testing.assert_close(got, torch.stack(list(expect.values())))
    assert torch.equal(caller, torch.eye(3))  # the caller's array was never written
    copy = model.copy()
    copy.set_user_weights(["zz"], torch.full((1, 3), 1 / 3))
    assert not bool(model.weights_for(["zz"], unknown="mean")[1][0])
    assert len(copy.users_) == len(model.users_) + 1


@settings(deadline=None)  # the first example pays for importing pyarrow
@example(users=["\x00", ""])  # numpy's fixed-width str drops trailing NULs
@given(users=st.lists(st.one_of(st.text(max_size=4), st.integers(-5, 5), st.none()), max_size=30))
def test_factorize_users_is_a_sorted_unique_encoding(users):
    from lore_rm.comparisons import factorize_users

    index, ids = factorize_users(users)
    assert ids == sorted(set(ids)) == sorted({str(u) for u in users})
    assert [ids[i] for i in index] == [str(u) for u in users]


def test_scoring_projection_is_kept_only_while_table_and_basis_are_unchanged():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=g)
    c = Comparisons.from_pairs(table, torch.arange(0, 20), torch.arange(20, 40), [0, 1] * 10)
    basis = torch.randn(8, 3, generator=g)
    torch.testing.assert_close(c.project_for_scoring(basis), c.project(basis))
    sub = c.subset(torch.arange(5))  # shares the table: served from the kept projection
    torch.testing.assert_close(sub.project_for_scoring(basis), sub.project(basis))
    basis[0, 0] += 1.0  # a changed basis is projected again
    torch.testing.assert_close(c.project_for_scoring(basis), c.project(basis))
    c.table.mul_(2.0)  # so is a table changed in place
    torch.testing.assert_close(c.project_for_scoring(basis), c.project(basis))


def _tamper_tensors(folder, **change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    for name, fn in change.items():
        tensors[name] = fn(tensors[name]).contiguous()
    save_file(tensors, str(folder / "model.safetensors"))


def _tamper_json(path, fn) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def _set(record: dict, **fields) -> dict:
    return {**record, **fields}


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (
            lambda f: _tamper_tensors(f, user_weights=lambda w: w[:, :2]),
            r"model\.safetensors: user_weights has shape \(\d+, 2\), expected \(n_users, 3\)",
        ),
        (
            lambda f: _tamper_tensors(f, basis=lambda b: b.half()),
            r"model\.safetensors: basis is torch\.float16, expected torch\.float32",
        ),
        (
            lambda f: _tamper_json(f / "users.json", lambda u: [u[1], *u[1:]]),
            r"users\.json: user id .* appears more than once",
        ),
        (
            lambda f: _tamper_json(f / "config.json", lambda c: _set(c, d=c["d"] + 1)),
            r"config\.json: d is \d+ but model\.safetensors holds \d+",
        ),
        (
            lambda f: _tamper_tensors(f, population_weights=lambda p: p[:2]),
            r"model\.safetensors: population_weights has shape \(2,\), expected \(3,\)",
        ),
        (
            lambda f: _tamper_tensors(f, user_weights=lambda w: w.fill_(float("nan"))),
            r"model\.safetensors: user_weights holds NaN",
        ),
        (
            lambda f: _tamper_json(f / "config.json", lambda c: _set(c, n_components=2)),
            r"config\.json: n_components is 2 but model\.safetensors holds 3",
        ),
        (
            lambda f: _tamper_json(f / "config.json", lambda c: _set(c, scale="big")),
            r"config\.json: scale is 'big'",
        ),
    ],
    ids=[
        "weights-2-cols",
        "basis-fp16",
        "duplicate-users",
        "config-d",
        "population-len",
        "nan",
        "n-components",
        "scale",
    ],
)
def test_tampered_model_folders_are_refused_at_load(fitted, tmp_path, tamper, match):
    assert fitted.n_components_ == 3
    fitted.save_pretrained(tmp_path)
    LowRankReward.from_pretrained(tmp_path)  # intact: loads
    tamper(tmp_path)
    with pytest.raises(ModelFormatError, match=match) as info:
        LowRankReward.from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


def test_model_files_get_the_mode_of_a_new_file(fitted, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        fitted.save_pretrained(tmp_path / "m")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
        os.umask(0o077)
        fitted.save_pretrained(tmp_path / "private")
        private = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "private").iterdir()}
    finally:
        os.umask(old)
    assert modes == {name: 0o644 for name in modes} and "model.safetensors" in modes
    assert private == {name: 0o600 for name in modes}


def test_from_pairs_checks_only_used_rows_for_nan_by_blocks():
    from lore_rm.comparisons import finite_rows

    table = torch.zeros(20_000, 3)
    table[5, 1] = float("nan")  # unused: fine
    table[17_000, 0] = float("inf")  # used, past the first block
    assert finite_rows(table, block=4096).sum() == 20_000 - 2
    Comparisons.from_pairs(table, [0, 1], [2, 3], ["a", "b"])
    with pytest.raises(DataError, match="row 17000 .used by a comparison. holds NaN or inf"):
        Comparisons.from_pairs(table, [0, 17_000], [2, 3], ["a", "b"])


def test_a_table_embedded_under_inference_mode_fits_and_scores():
    """A backbone's embed output is an inference tensor (no version counter): the scoring
    cache keyed on the table's version must take it as it comes."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        table = torch.randn(60, 6, generator=gen)
    assert table.is_inference()
    chosen, rejected = torch.arange(0, 60, 2), torch.arange(1, 60, 2)
    data = Comparisons.from_pairs(table, chosen, rejected, [f"u{i % 5}" for i in range(30)])
    model = LowRankReward(rank=2, weight_decay=0.1, personalization=1.0).fit(data)
    margins = model.margins(data)
    assert margins.shape == (30,) and bool(torch.isfinite(margins).all())
    torch.testing.assert_close(model.margins(data), margins)  # the cached projection
