"""``--threads``: the rule behind 'auto', the CLI option, and fits equal across thread counts."""

import json
import os
import subprocess
import sys

import pytest
import torch
from text_population import answers, text_split
from typer.testing import CliRunner

import lore_rm.fit.model
from lore_rm import LoreError, LowRankReward, PopulationConfig, four_numbers, simulate_population
from lore_rm import threads as th
from lore_rm.cli import app


@pytest.fixture
def restore_threads():
    before, pinned = torch.get_num_threads(), th._pinned
    yield
    torch.set_num_threads(before)
    th.pin_threads(pinned)


def test_auto_leaves_busy_cpus_alone(monkeypatch, restore_threads):
    torch.set_num_threads(8)
    monkeypatch.setattr(th, "usable_cpus", lambda: 4)
    monkeypatch.setattr(th.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert th.resolve_threads("auto") == 3  # 3.8 idle CPUs
    monkeypatch.setattr(th.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert th.resolve_threads("AUTO") == 4
    monkeypatch.setattr(th.os, "getloadavg", lambda: (7.5, 0.0, 0.0))
    assert th.resolve_threads("auto") == 1
    torch.set_num_threads(2)
    monkeypatch.setattr(th.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert th.resolve_threads("auto") == 2  # never above torch's default


def test_explicit_counts_and_bad_values():
    assert th.resolve_threads("3") == 3 and th.resolve_threads(1) == 1
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="--threads"):
            th.resolve_threads(bad)


def test_cli_sets_and_records_the_thread_count(tmp_path, restore_threads):
    res = CliRunner().invoke(app, ["demo", "--threads", "0", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--threads" in res.output
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--threads", "1", "--ranks", "1", "--shots", "2"]
    args += ["--trials", "1", "--n-seen", "20", "--n-unseen", "5", "--d", "6", "--active", "0"]
    res = CliRunner().invoke(app, [*args, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1
    assert json.loads((out / "config.json").read_text())["threads"] == 1


def test_one_and_two_threads_give_the_same_accuracies(restore_threads):
    split = simulate_population(PopulationConfig(d=64, n_seen=60, n_unseen=20)).split
    numbers = []
    for n in (1, 2):
        torch.set_num_threads(n)
        model = LowRankReward(rank=3, threads=n).fit(split.seen_train, split.reference_head)
        numbers.append(four_numbers(model, split))
    for key, value in numbers[0].items():
        if isinstance(value, float):
            assert abs(value - numbers[1][key]) <= 1e-6, key


def test_the_seen_users_shrinkage_gives_the_same_basis_with_one_and_two_threads(restore_threads):
    """Rank 4 with three rounds of shrinkage: float noise from the thread count must stay
    noise. An extrapolated prior EM and a refit started from carried curvature pairs each
    turned it into a different stopping point (basis 1e-4 apart, relative; docs/measurements.md,
    fourth pass)."""
    split = simulate_population(
        PopulationConfig(seed=0, d=32, n_seen=200, n_unseen=20, train_per_user=15)
    ).split
    fits = []
    for n in (1, 2):
        torch.set_num_threads(n)
        fits.append(
            LowRankReward(rank=4, weight_decay=0.003, personalization=1.0, threads=n).fit(
                split.seen_train
            )
        )
    one, two = fits
    assert one.history_["hierarchy"]["rounds"] >= 2
    assert one.history_["hierarchy"]["iterations"] == two.history_["hierarchy"]["iterations"]
    gap = float((one.basis_ - two.basis_).norm() / one.basis_.norm())
    assert gap < 1e-5, gap


def test_the_library_fit_applies_the_auto_rule_and_restores_torchs_setting(
    monkeypatch, restore_threads, easy_population
):
    data = easy_population.split.seen_train
    seen: list[int] = []
    resolve = lore_rm.fit.model.resolve_auto

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return resolve(*args, **kwargs)

    monkeypatch.setattr(lore_rm.fit.model, "resolve_auto", recording)
    monkeypatch.setattr(th, "usable_cpus", lambda: 2)
    monkeypatch.setattr(th.os, "getloadavg", lambda: (7.5, 0.0, 0.0))  # a busy machine
    torch.set_num_threads(2)
    th.pin_threads(None)
    for threads, expected in (("auto", 1), (None, 2), (2, 2)):
        LowRankReward(rank=2, weight_decay=0.1, threads=threads).fit(data)
        assert seen[-1] == expected and torch.get_num_threads() == 2
    th.pin_threads(2)  # what a command's --threads does: 'auto' keeps it
    LowRankReward(rank=2, weight_decay=0.1).fit(data)
    assert seen[-1] == 2
    monkeypatch.setattr(th.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    th.pin_threads(None)
    LowRankReward(rank=2, weight_decay=0.1).fit(data)
    assert seen[-1] == 2  # an idle machine: every usable CPU, at most torch's setting
    with pytest.raises(LoreError, match="threads must be"):
        LowRankReward(rank=2, weight_decay=0.1, threads="many").fit(data)


def test_one_and_two_threads_give_the_same_answer_on_real_text(minilm_backbone, restore_threads):
    """Real MiniLM embeddings of answers written in tests/text_population.py; users of five
    opposite kinds. The search and the fit choose the same cell and give the same numbers
    with 1 and 2 threads."""
    texts, attrs = answers()
    convs = [[{"role": "assistant", "content": t}] for t in texts]
    split = text_split(minilm_backbone.embed(convs).clone(), attrs)
    results = []
    for n in (1, 2):
        model = LowRankReward(
            seed=0, threads=n, rank_grid=(1, 2, 3), weight_decay_grid=(0.1, 1.0), cv_folds=3
        ).fit(split.seen_train)
        with th.torch_threads(n):
            numbers = four_numbers(model, split)
        cell = (model.rank_, model.config_.weight_decay, model.personalization_)
        results.append((cell, numbers, model.margin_scale_))
    (cell, numbers, scale), (cell_2, numbers_2, scale_2) = results
    assert cell == cell_2 and cell[0] > 1  # users disagree: a personalised rank
    assert abs(scale - scale_2) <= 1e-6
    for key in ("train", "seen_test", "fewshot_train", "unseen_test"):
        assert abs(numbers[key] - numbers_2[key]) <= 1e-6, key


def _quartic(x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """A separable, badly scaled objective whose value and gradient are the same bits on any
    thread count (elementwise products only; the sum on one thread)."""
    a = torch.linspace(0.01, 10.0, x.numel(), dtype=x.dtype)
    with th.one_thread(x.device):
        loss = float((0.5 * a * x * x + 0.25 * x**4 - x).double().sum())
    return loss, a * x + x**3 - 1.0


def test_lbfgs_iterates_are_the_same_bits_on_one_and_two_threads(restore_threads):
    """The direction's products and the step's dot products run on one thread: BLAS splits a
    long float64 dot product among threads, and a last-bit difference in the iterate sometimes
    rounds to another float32 point (docs/recipes.md)."""
    from lore_rm.fit import lbfgs

    x0 = torch.zeros(200_000)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        state = lbfgs.start(_quartic, x0)
        why = lbfgs.minimize(_quartic, state, 40, 1e-6)
        runs.append((state.x, state.iterations, why))
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]
    assert torch.equal(runs[0][0], runs[1][0])


def test_the_spectral_start_is_the_same_bits_on_one_and_two_threads(restore_threads):
    from lore_rm.fit.start import initial_point

    pop = simulate_population(
        PopulationConfig(d=384, n_seen=300, n_unseen=1, train_per_user=20, true_rank=3, seed=0)
    )
    data = pop.split.seen_train
    sigma = torch.ones(data.d)
    starts = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        starts.append([initial_point(data, sigma, 4, kind) for kind in ("spectral", "svd")])
    for (b1, l1), (b2, l2) in zip(*starts, strict=True):
        assert torch.equal(b1, b2) and torch.equal(l1, l2)


_PRODUCT_BITS = """
import sys
import lore_rm, torch
g = torch.Generator().manual_seed(0)
x, h = torch.randn(60_000, 32, generator=g), torch.randn(60_000, 20, generator=g)
out = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    out.append(h.T @ x)
print(torch.equal(*out), __import__("os").environ["MKL_CBWR"])
"""


def test_importing_lore_rm_asks_mkl_for_thread_independent_products():
    """A shape where MKL splits the reduction among threads (60,000 x 32): the same bits on 1
    and 2 threads once lore_rm is imported first; a value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    run = subprocess.run(
        [sys.executable, "-c", _PRODUCT_BITS], capture_output=True, text=True, env=env
    )
    assert run.stdout.split() == ["True", "AUTO,STRICT"], run.stderr
    env["MKL_CBWR"] = "COMPATIBLE"
    run = subprocess.run(
        [sys.executable, "-c", _PRODUCT_BITS], capture_output=True, text=True, env=env
    )
    assert run.stdout.split()[1] == "COMPATIBLE", run.stderr


_PRODUCT_FIRST = """
import warnings
import torch
if {first}:
    torch.ones(4, 4) @ torch.ones(4, 4)  # MKL starts here, before lore_rm sets MKL_CBWR
from lore_rm import LowRankReward, simulate_population
split = simulate_population(d=8, n_seen=20, n_unseen=2, train_per_user=10, seed=0).split
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = LowRankReward(rank=2, weight_decay=0.1, personalization=1.0).fit(split.seen_train)
print(model.history_["threads"]["reproducible_products"])
print(sum("reproducible mode" in str(w.message) for w in caught))
"""


@pytest.mark.parametrize("first", [False, True])
def test_a_fit_records_whether_mkl_was_strict_and_warns_when_it_came_too_late(first):
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    code = _PRODUCT_FIRST.format(first=first)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    strict, warned = run.stdout.split()
    if strict == "None":  # no MKL in this torch build: nothing to record or warn about
        return
    assert (strict, warned) == (("False", "1") if first else ("True", "0"))


@pytest.mark.parametrize("rows_layout", [False, True])
def test_the_users_solve_is_the_same_bits_on_one_and_two_threads(restore_threads, rows_layout):
    """Uneven users take the row layout (gathers, ``index_add_``), even ones the padded
    layout; either solve, restricted steps and trials included, is the same bits."""
    from lore_rm.fit.objective import newton_point
    from lore_rm.fit.user_layout import RowLayout

    g = torch.Generator().manual_seed(11)
    counts = torch.randint(5, 60, (150,), generator=g) if rows_layout else torch.full((150,), 30)
    u = torch.arange(150).repeat_interleave(counts)
    u = u[torch.randperm(u.numel(), generator=g)]
    z = torch.randn(u.numel(), 5, 4, generator=g)
    coef = torch.rand(u.numel(), 5, generator=g) / u.numel()
    logits = 2.0 * torch.randn(5, 150, 4, generator=g)
    eye = torch.eye(4, dtype=torch.float64)

    def penalty(lg):
        lg = lg.double()
        return 0.005 * (lg**2).sum(-1), 0.01 * lg, 0.01 * eye.expand(lg.shape[0], 1, 4, 4)

    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        layout = RowLayout(u, 150) if rows_layout else None
        point, _ = newton_point(z, logits, u, coef, 1.0, penalty, 1e-6, 30, layout=layout)
        runs.append((point.logits, point.loss, *point.row_terms()))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
