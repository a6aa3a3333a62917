"""Intervals for every number the tool reports: one bootstrap, used by latency and accuracy alike.

Why a bootstrap: the quantities we report are medians of paired latency ratios, exponentials of
mean token losses (perplexity), shares of right tokens or items. None has a convenient exact
interval, and their samples are not independent token by token (tokens of one document or one
window move together). So every interval here resamples *units* — blocks of latency samples,
documents, windows, items — with replacement, recomputes the statistic, and reports the 5th and
95th percentiles of those replicates (a 90% percentile interval). A fixed seed makes the
interval reproducible for the same data.

Paired comparisons (two shapes or two methods scored on the same units): resample the unit
indices once per replicate and apply the same indices to both, so the difference's interval
reflects only how the two *differ* unit by unit, not how hard each unit is. A difference is
called significant when its interval excludes 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

LEVEL = 0.90
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval (``level``, default 90%)."""

    value: float
    lo: float
    hi: float
    n: int
    level: float = LEVEL

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        d = asdict(self)
        return {f"{prefix}{k}": v for k, v in d.items()}

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def _percentiles(reps: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    lo, hi = np.nanpercentile(reps, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def bootstrap(
    units: Sequence[np.ndarray] | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """Interval of ``statistic`` over the concatenation of resampled ``units``.

    ``units``: a 1-D array (each element is a unit) or a list of arrays (each array is one unit,
    e.g. the token losses of one document); the statistic sees the concatenated values.
    """
    if isinstance(units, np.ndarray) and units.ndim == 1:
        groups = [units[i : i + 1] for i in range(len(units))]
    else:
        groups = [np.asarray(u, dtype=float).ravel() for u in units]
    if not groups:
        raise ValueError("bootstrap needs at least one unit")
    value = float(statistic(np.concatenate(groups)))
    if len(groups) == 1:
        return Interval(value, value, value, 1, level)
    rng = np.random.default_rng(seed)
    k = len(groups)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, k, k)
        reps[b] = statistic(np.concatenate([groups[i] for i in idx]))
    lo, hi = _percentiles(reps, level)
    return Interval(value, min(lo, value), max(hi, value), k, level)


def mean_ci(values: Sequence[float], **kw) -> Interval:
    """Mean of independent units (e.g. per-item correctness) with its bootstrap interval."""
    return bootstrap(np.asarray(values, dtype=float), np.mean, **kw)


def median_ci(values: Sequence[float], **kw) -> Interval:
    """Median of independent units (e.g. per-block latency ratios) with its bootstrap interval."""
    return bootstrap(np.asarray(values, dtype=float), np.median, **kw)


def grouped_mean_ci(sums: Sequence[float], counts: Sequence[float], transform: Callable[[float], float] | None = None,
                    n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Ratio estimator sum(sums)/sum(counts) resampled by unit, optionally transformed.

    The efficient form for token-level metrics grouped by documents or windows: each unit gives
    the sum of its token losses (or right tokens) and its token count; perplexity is
    ``grouped_mean_ci(nll_sums, counts, transform=math.exp)``.
    """
    s = np.asarray(sums, dtype=float)
    c = np.asarray(counts, dtype=float)
    if len(s) == 0 or len(s) != len(c):
        raise ValueError("need one count per unit, at least one unit")
    f = transform or (lambda x: x)
    value = float(f(s.sum() / c.sum()))
    if len(s) == 1:
        return Interval(value, value, value, 1, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(s), (n_boot, len(s)))
    reps = np.array([f(x) for x in s[idx].sum(1) / c[idx].sum(1)])
    lo, hi = _percentiles(reps, level)
    return Interval(value, min(lo, value), max(hi, value), len(s), level)


@dataclass(frozen=True)
class PairedDiff:
    """``a - b`` on the same units: the difference, its interval, and whether it excludes 0."""

    diff: Interval
    a: float
    b: float

    @property
    def significant(self) -> bool:
        return not self.diff.contains(0.0)

    def verdict(self, lower_is_better: bool = True, names: tuple[str, str] = ("A", "B")) -> str:
        if not self.significant:
            return "not significant"
        a_better = (self.diff.value < 0) == lower_is_better
        return f"{names[0] if a_better else names[1]} better"

    def to_dict(self) -> dict[str, float | bool | str]:
        return {"a": self.a, "b": self.b, **self.diff.to_dict("diff_"), "significant": self.significant}


def paired_diff(
    a_sums: Sequence[float], b_sums: Sequence[float], counts: Sequence[float] | None = None,
    transform: Callable[[float], float] | None = None, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
) -> PairedDiff:
    """Paired bootstrap of ``f(Σa/Σc) - f(Σb/Σc)`` resampling the same units for both.

    With ``counts=None`` every unit weighs 1 (per-item scores). For perplexities pass per-unit
    NLL sums, token counts and ``transform=math.exp``.
    """
    a = np.asarray(a_sums, dtype=float)
    b = np.asarray(b_sums, dtype=float)
    c = np.ones_like(a) if counts is None else np.asarray(counts, dtype=float)
    if not (len(a) == len(b) == len(c)) or len(a) == 0:
        raise ValueError("paired_diff needs the same units (same length) for both sides")
    f = transform or (lambda x: x)
    va, vb = float(f(a.sum() / c.sum())), float(f(b.sum() / c.sum()))
    if len(a) == 1:
        d = va - vb
        return PairedDiff(Interval(d, d, d, 1, level), va, vb)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n_boot, len(a)))
    cs = c[idx].sum(1)
    reps = np.array([f(x) for x in a[idx].sum(1) / cs]) - np.array([f(x) for x in b[idx].sum(1) / cs])
    lo, hi = _percentiles(reps, level)
    d = va - vb
    return PairedDiff(Interval(d, min(lo, d), max(hi, d), len(a), level), va, vb)


def paired_ratio_ci(a_samples: Sequence[float], ref_samples: Sequence[float], blocks: Sequence[int] | None = None,
                    **kw) -> Interval:
    """Median of the ratios ``a_i / ref_i`` of samples taken side by side (a sample of the shape
    and the reference sample next to it), with a bootstrap interval resampling ``blocks``
    (e.g. the round each pair came from) or, without blocks, the pairs themselves."""
    a = np.asarray(a_samples, dtype=float)
    r = np.asarray(ref_samples, dtype=float)
    if len(a) != len(r) or len(a) == 0:
        raise ValueError("paired ratios need one reference sample per sample")
    ratios = a / r
    if blocks is None:
        return median_ci(ratios, **kw)
    b = np.asarray(blocks)
    units = [ratios[b == k] for k in np.unique(b)]
    return bootstrap(units, np.median, **kw)
