"""The report plots' axes: shot counts on a log axis ticked at the counts used, legends that
cover no point, a selection plot focused on the losses that decide, no zero-width error bars."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from lore_rm.cli.fit import plot_selection  # noqa: E402
from lore_rm.evaluate.report import plot_active, plot_ranks, plot_shots  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The figure a plot function drew (kept open), read back after it saved it."""
    monkeypatch.setattr(plt, "close", lambda *a, **k: None)
    yield lambda: plt.gcf()
    plt.close("all")  # the real close (the fixture's patch is undone first)


def four(value: float) -> dict:
    return {
        m: value + d
        for m, d in (
            ("train", 0.03),
            ("seen_test", 0.0),
            ("fewshot_train", 0.02),
            ("unseen_test", -0.01),
        )
    } | {f"{m}_std": 0.01 for m in ("train", "seen_test", "fewshot_train", "unseen_test")}


def test_shots_on_a_log_axis_ticked_at_the_counts_used(tmp_path, drawn):
    shots = [1, 2, 5, 10, 20]
    rows = [
        {
            "rank": 4,
            "shots": s,
            "unseen_test": 0.7 + 0.01 * i,
            "unseen_test_std": 0.005,
            "trials": 5,
        }
        for i, s in enumerate(shots)
    ]
    plot_shots(rows, tmp_path / "shots.png")
    ax = drawn().axes[0]
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == shots
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "5", "10", "20"]
    lo, hi = ax.get_xlim()
    assert lo < 1 and hi > 20 and hi / lo < 40  # the counts used fill the axis
    assert (tmp_path / "shots.png").stat().st_size > 0


def test_the_rank_legend_covers_no_point(tmp_path, drawn):
    # real-data shape: accuracies near the top at high ranks, where a legend inside sits
    rows = [{"rank": k, **four(0.6 + 0.03 * min(k, 8))} for k in range(11)]
    plot_ranks(rows, tmp_path / "ranks.png", oracle={"unseen_test": 0.9})
    fig = drawn()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    points = [
        ax.transData.transform((x, y))
        for line in ax.get_lines()
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)
        if isinstance(x, int | float) and math.isfinite(x)
    ]
    assert points and not any(legend.contains(px, py) for px, py in points)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the axes, not over them
    assert list(ax.get_xticks()) == list(range(11))  # a tick per rank fitted


def selection(rows: list[tuple[int, float, float, float]]) -> dict:
    out = [
        {"rank": k, "weight_decay": wd, "cv_loss": loss, "cv_loss_se": se, "chosen": False}
        for k, wd, loss, se in rows
    ]
    return {"rows": out, "folds": 5, "rule": "one standard error"}


def test_selection_axis_shows_the_losses_that_decide(tmp_path, drawn):
    # weak ridges overfit far above a coin (up to 1.8); the choice is between 0.675 and 0.693
    grid = [0.001, 0.01, 0.1, 1.0, 10.0]
    rows = []
    for k, losses in ((2, (1.8, 1.1, 0.69, 0.680, 0.686)), (4, (1.6, 0.95, 0.683, 0.675, 0.684))):
        rows += [(k, wd, loss, 0.004) for wd, loss in zip(grid, losses, strict=True)]
    sel = selection(rows)
    sel["rows"][8]["chosen"] = True  # rank 4, weight_decay 1: 0.675
    plot_selection(sel, tmp_path / "selection.png")
    ax = drawn().axes[0]
    lo, hi = ax.get_ylim()
    assert 0.66 < lo < 0.671 and 0.693 < hi < 0.71  # 0.675 vs 0.693 fill the axis
    assert ax.get_xscale() == "log"
    assert "4 weaker fits above the view (up to 1.8)" in ax.get_title()
    # a selection whose losses all sit in a narrow band keeps them all in view
    calm = selection([(3, wd, 0.60 + 0.001 * i, 0.002) for i, wd in enumerate(grid)])
    calm["rows"][0]["chosen"] = True
    plot_selection(calm, tmp_path / "calm.png")
    lo, hi = drawn().axes[0].get_ylim()
    assert lo < 0.598 and 0.606 < hi < 0.62


def active_rows(trials: int, spread: float) -> list[dict]:
    return [
        {
            "rank": 4,
            "criterion": criterion,
            "questions": q,
            "trials": trials,
            "unseen_test": 0.68 + 0.01 * q,
            "unseen_test_std": 0.0 if criterion == "information" else spread,
        }
        for criterion in ("information", "random")
        for q in range(4)
    ]


def yerr_drawn(ax) -> dict[str, bool]:
    return {c.get_label(): c.has_yerr for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_active_draws_error_bars_only_where_there_is_a_spread(tmp_path, drawn):
    plot_active(active_rows(1, 0.0), tmp_path / "one.png")
    assert yerr_drawn(drawn().axes[0]) == {
        "information (trials 1)": False,
        "random (trials 1)": False,
    }
    plot_active(active_rows(5, 0.01), tmp_path / "five.png")
    assert yerr_drawn(drawn().axes[0]) == {
        "information (trials 5)": False,  # greedy: the same questions in every trial
        "random (trials 5)": True,
    }
