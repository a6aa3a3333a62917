"""Successive-halving arithmetic of the multi-fidelity hierarchical search (:mod:`search.hierarchical`):
how optimistic to be about a screened shape, and what its full-budget score is expected to be."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

from search.objectives import AccuracyRecord

# A screened shape stops when a faster-or-equal shape beats it by a paired interval at this level that
# excludes 0 (two-sided 98%: 1% one-sided error per comparison, as a shape is compared with several).
PRUNE_LEVEL = 0.98
# ... and only on at least this many shared windows: a bootstrap over 2 windows excludes 0 whenever
# both differences have the same sign (on the 240-shape SmolLM2 space, ladders starting at 2 windows
# pruned front shapes that way and never reached 99% of the front).
MIN_PAIRED_WINDOWS = 8

Posterior = Callable[[Hashable], tuple[float, float, float]]  # key -> (estimate, sd, upper end)


def upper_bound(rec: AccuracyRecord) -> float:
    """Upper end of a screened shape's top-1 interval, for optimism.

    Below ``MIN_PAIRED_WINDOWS`` windows a bootstrap over windows is degenerate (over 2 windows
    its upper end is about the better window's accuracy), so the interval is widened to at least
    a Wilson bound over the rung's tokens at ``PRUNE_LEVEL`` (tokens of a window are correlated, so
    this is still optimistic about the precision; it only keeps a cheap score from closing a region).
    """
    hi = rec.interval()[1]
    n_win = len(rec.window_correct or ())
    if 0 < n_win < MIN_PAIRED_WINDOWS and rec.window_count:
        n = float(sum(rec.window_count))
        p = float(sum(rec.window_correct)) / n
        z = NormalDist().inv_cdf(0.5 + PRUNE_LEVEL / 2)  # two-sided PRUNE_LEVEL: 2.326 at 98%
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        hi = max(hi, centre + half)
    return float(hi)


def window_posterior(recs: Mapping[Hashable, AccuracyRecord], decided: Sequence[Hashable],
                     level: float = PRUNE_LEVEL) -> Posterior:
    """(estimate, sd, upper end) of a screened shape's full-budget top-1, window-adjusted.

    Every window's difficulty is common to all shapes: ``delta_w`` = mean over the ``decided``
    (full-budget) shapes of (window accuracy - full accuracy). A screened shape's estimate is the
    token-weighted mean of its scored windows' (accuracy - delta_w); its sd ``sigma * sqrt((N - n) / (N n))``
    with ``sigma`` the pooled residual sd of the full-budget shapes' windows; the upper end is at the two-sided
    ``level``. The offsets' own error is left out (it shrinks as shapes reach the full budget; with the first
    few the sd is optimistic). With fewer than 2 full-budget shapes: the raw score and its interval
    (:func:`upper_bound`)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)

    def raw(k: Hashable) -> tuple[float, float, float]:
        rec = recs[k]
        hi = upper_bound(rec)
        return rec.top1_acc, max(hi - rec.top1_acc, 0.0) / z, hi

    if len(decided) < 2:
        return raw
    C = np.array([recs[k].window_correct for k in decided], dtype=float)
    T = np.array([recs[k].window_count for k in decided], dtype=float)
    A = C / np.maximum(T, 1)
    full = C.sum(1, keepdims=True) / T.sum(1, keepdims=True)
    delta = (A - full).mean(0)
    res = A - full - delta
    n_s, n_w = A.shape
    sigma = float(np.sqrt((res ** 2).sum() / max((n_s - 1) * (n_w - 1), 1)))

    def adjusted(k: Hashable) -> tuple[float, float, float]:
        r = recs[k]
        n = len(r.window_correct or ())
        if n == 0 or n > n_w:
            return raw(k)
        c, t = np.array(r.window_correct, dtype=float), np.array(r.window_count, dtype=float)
        est = float(((c / np.maximum(t, 1) - delta[:n]) * t).sum() / t.sum())
        sd = sigma * math.sqrt(max(n_w - n, 0) / (n_w * n))
        return est, sd, est + z * sd

    return adjusted
