"""Axes, ticks, limits and legends of the report plots, each chosen from the data drawn.

* :func:`count_axis`: shot counts on a log axis with a tick at each count used (1, 2, 5, 10,
  20 shots spread evenly, labelled as the counts, not 2.5, 7.5, ...);
* :func:`legend_beside`: the legend outside the axes, where it cannot cover a point;
* :func:`focus_losses`: a loss axis on the region that decides the choice (the best losses up
  to a coin's), not on the overfits far above it;
* :func:`spread_or_none`: error bars only where there is a spread to show (no zero-width bars
  for a single trial or a deterministic criterion).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LN2 = math.log(2.0)


def count_axis(ax, counts: Sequence[float]) -> None:
    """A log x axis with one tick per count used, labelled with the count. A count of 0
    (nothing asked yet) sits on a linear stretch below 1 (``symlog``)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    used = sorted({float(c) for c in counts})
    if not used:
        return
    if used[0] <= 0:
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    else:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(used))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{c:g}" for c in used])
    lo, hi = used[0], used[-1]
    if lo > 0 and hi > lo:
        pad = (hi / lo) ** 0.04
        ax.set_xlim(lo / pad, hi * pad)


def legend_beside(ax, fontsize: float = 7) -> None:
    """The legend to the right of the axes (outside them: it covers no point)."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def focus_losses(ax, losses: Sequence[float], ses: Sequence[float], chosen_top: float) -> int:
    """Limit the y axis to the losses that matter: from the lowest (less its standard error)
    to a coin's log-loss or ``chosen_top`` (the chosen loss plus its standard error),
    whichever is higher; never further than the data reach. Returns how many points lie
    above the view."""
    lows = [v - s for v, s in zip(losses, ses, strict=True) if math.isfinite(v)]
    highs = [v + s for v, s in zip(losses, ses, strict=True) if math.isfinite(v)]
    if not lows:
        return 0
    lo = min(lows)
    top = max(LN2, chosen_top)
    hi = min(max(highs), top + 0.15 * max(top - lo, 1e-3))
    pad = 0.06 * max(hi - lo, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
    return sum(v > hi + pad for v in losses if math.isfinite(v))


def spread_or_none(stds: Sequence[float], trials: int | None = None) -> list[float] | None:
    """``stds`` for ``yerr``, or None when there is nothing to draw (one trial, or every std
    zero: a deterministic curve)."""
    if trials is not None and trials < 2:
        return None
    values = [float(s) for s in stds]
    if not any(math.isfinite(v) and v > 0 for v in values):
        return None
    return values
