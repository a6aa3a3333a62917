"""Latency of every shape from a few measured ones.

Model: ``t(depth, width) = fixed(width) + depth * per_layer(width)``. ``fixed`` is the cost of
embedding, final norm, LM head and per-step overhead; ``per_layer`` the cost of one decoder
layer. For each measured width, both come from a least-squares line through the measured
depths (at least two distinct depths). Across widths, ``fixed`` and ``per_layer`` are
interpolated linearly in the *parameter count of one scaled layer* (so the GQA head steps of
the width policy are respected: two widths with the same heads and MLP get the same cost);
outside the measured widths the nearest two are extrapolated and the estimate is flagged.

Per-layer composition (``--per-layer``) uses the same line: whole models of depth 1, 2 and 4
are timed and ``t(d) = t0 + d * slope`` composes deeper ones.

Drift-corrected inputs: rows that carry ``ms`` (from :meth:`profiler.table.LatencyTable.corrected`,
i.e. ``ratio * reference level`` of rows timed by the paired protocol) are fitted on ``ms``;
plain rows on ``p50_ms``.

Interval of every estimate (:meth:`LatencyPredictor.estimate`, 90%): ``[ms / (1 + h), ms * (1 + h)]``
(multiplicative, so it never goes below 0) with the relative half-width

    h = sqrt(h_meas**2 + (1.645 * s_fit)**2 + h_width**2) * (1 + e)

- ``h_meas``: the measurement precision of the rows the estimate rests on, the median relative
  half-width of their intervals (``ms_lo``/``ms_hi``: the bootstrap interval of the paired
  ratio), the larger of the two widths an interpolation uses;
- ``s_fit``: the pooled relative residual of the depth lines, ``sqrt(sum r**2 / dof)`` with
  ``dof = sum(depths per width - 2)`` (0 when every width has two depths: the line then passes
  exactly through its points and only ``h_meas`` remains);
- ``h_width`` (widths that were not measured only): the RMS relative error of predicting each
  interior measured width from its two neighbours (leave-one-width-out; the gap is twice the
  real one, so this errs wide);
- ``e`` (extrapolated estimates only, flagged): the distance outside the measured depths or
  layer sizes relative to their span, widening the interval in proportion.

Separate attention/MLP widths: rows with an ``attn_width`` (``d24-a0.667-m0.750``) get their own
depth line, keyed by :func:`amoeba_core.shape.width_key`; across width points the coordinate is the
same parameter count of one scaled layer (attention and MLP parts both counted), so a one-ratio
width and a separate pair that are the same network (SmolLM2 ``w0.750`` and ``a0.667-m0.750``)
share a coordinate. Every ``width`` argument below also takes such a key, or ``attn_width=``.

The predictor reports its own error: :meth:`LatencyPredictor.holdout_errors` on measured rows
it was not fitted on, and :meth:`LatencyPredictor.self_check` by leaving out one depth at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, WidthAxes, grid_key, width_key

log = logging.getLogger(__name__)


def fit_line(depths: Iterable[int], ms: Iterable[float]) -> tuple[float, float]:
    """Least-squares ``ms = t0 + depth * slope`` with ``t0 >= 0`` and ``slope >= 0``; returns (t0, slope).

    Both are times (fixed cost, cost of one layer), never negative. Unconstrained, a few noisy
    shallow rows can tilt the line so that it crosses zero and shallow shapes get negative
    latencies; the constrained optimum of this two-parameter problem then lies on a boundary:
    a line through the origin (``t0 = 0``) or a flat line (``slope = 0``), whichever fits better.
    """
    d = np.asarray(list(depths), dtype=float)
    y = np.asarray(list(ms), dtype=float)
    if len(set(d.tolist())) < 2:
        raise AmoebaError("a depth line needs at least two distinct depths")
    slope, t0 = np.polyfit(d, y, 1)
    if t0 >= 0 and slope >= 0:
        return float(t0), float(slope)
    candidates = [(max(float(y.mean()), 0.0), 0.0)]
    through_origin = float(d @ y / (d @ d))
    if through_origin >= 0:
        candidates.append((0.0, through_origin))
    t0, slope = min(candidates, key=lambda c: float(((c[0] + d * c[1] - y) ** 2).sum()))
    return float(t0), float(slope)


def _rows_keys(rows: pd.DataFrame) -> pd.Series:
    """Width key of every row (``attn_width`` absent or NaN: one ratio)."""
    attn = rows["attn_width"] if "attn_width" in rows.columns else pd.Series(np.nan, index=rows.index)
    return pd.Series([width_key(float(w), None if pd.isna(a) else float(a)) for w, a in zip(rows["width"], attn)],
                     index=rows.index, dtype=object)


def _sort_key(k: float | WidthAxes) -> tuple[float, float]:
    return (k[1], k[0]) if isinstance(k, tuple) else (k, -1.0)


def _label(k: float | WidthAxes) -> str:
    """``0.750`` for a one-ratio width (as before), ``a0.667-m0.750`` for a separate pair."""
    return grid_key(1, k)[3:] if isinstance(k, tuple) else f"{k:.3f}"


@dataclass(frozen=True)
class WidthFit:
    width: float | WidthAxes  # width key
    fixed_ms: float
    per_layer_ms: float
    depths: tuple[int, ...]
    resid_rel: tuple[float, ...] = ()  # relative residuals of the depth line at its depths
    meas_rel: float = 0.0  # median relative half-width of the measured rows' intervals


@dataclass(frozen=True)
class Prediction:
    """An estimate with its 90% interval; ``extrapolated``: outside the measured depths/widths."""

    ms: float
    lo_ms: float
    hi_ms: float
    extrapolated: bool


Z90 = 1.645


def _value_column(rows: pd.DataFrame) -> str:
    return "ms" if "ms" in rows.columns else "p50_ms"


def _rel_half_widths(rows: pd.DataFrame) -> pd.Series:
    if not {"ms_lo", "ms_hi"} <= set(rows.columns):
        return pd.Series(np.nan, index=rows.index)
    y = rows[_value_column(rows)].astype(float)
    return (rows["ms_hi"].astype(float) - rows["ms_lo"].astype(float)) / (2 * y)


class LatencyPredictor:
    """Fitted on rows of one (phase, variant, prompt_len, batch): columns depth, width, p50_ms."""

    def __init__(self, fits: dict[float | WidthAxes, WidthFit], geometry: ModelGeometry | None = None) -> None:
        if not fits:
            raise AmoebaError("no width has two measured depths: nothing to fit the predictor on")
        self.fits = dict(sorted(fits.items(), key=lambda kv: _sort_key(kv[0])))
        self.geometry = geometry
        self._x = np.array([self._coord(w) for w in self.fits])
        self._fixed = np.array([f.fixed_ms for f in self.fits.values()])
        self._slope = np.array([f.per_layer_ms for f in self.fits.values()])
        all_d = [d for f in self.fits.values() for d in f.depths]
        self.depth_range = (min(all_d), max(all_d))
        resid = [r for f in self.fits.values() for r in f.resid_rel]
        dof = sum(max(0, len(f.depths) - 2) for f in self.fits.values())
        self.s_fit = float(np.sqrt(np.sum(np.square(resid)) / dof)) if dof > 0 else 0.0
        self.h_width = self._width_error()

    @classmethod
    def fit(cls, rows: pd.DataFrame, geometry: ModelGeometry | None = None) -> LatencyPredictor:
        """Fit on ``rows`` (one variant/phase/prompt_len/batch/threads): columns depth, width and
        ``ms`` (drift-corrected, with ``ms_lo``/``ms_hi``) or ``p50_ms``."""
        col = _value_column(rows)
        rows = rows.assign(_h=_rel_half_widths(rows))
        fits: dict[float | WidthAxes, WidthFit] = {}
        for w, grp in rows.groupby(_rows_keys(rows), sort=False):
            g = grp.groupby("depth")[col].median()
            if len(g) < 2:
                log.debug("width %s has one depth only; not used by the predictor", w)
                continue
            t0, slope = fit_line(g.index.tolist(), g.values.tolist())
            fitted = t0 + np.asarray(g.index, dtype=float) * slope
            resid = tuple(float(x) for x in (g.values - fitted) / fitted)
            h = grp["_h"].dropna()
            fits[w] = WidthFit(w, t0, slope, tuple(int(x) for x in g.index), resid,
                                      float(h.median()) if len(h) else 0.0)
        return cls(fits, geometry)

    def _width_error(self) -> float:
        """Leave-one-width-out RMS relative error of interpolating an interior width."""
        xs = self._x
        order = np.argsort(xs)
        fits = [list(self.fits.values())[i] for i in order]
        x = xs[order]
        errs: list[float] = []
        for k in range(1, len(fits) - 1):
            if not x[k - 1] < x[k] < x[k + 1]:
                continue
            t = (x[k] - x[k - 1]) / (x[k + 1] - x[k - 1])
            fx = fits[k - 1].fixed_ms + t * (fits[k + 1].fixed_ms - fits[k - 1].fixed_ms)
            sl = fits[k - 1].per_layer_ms + t * (fits[k + 1].per_layer_ms - fits[k - 1].per_layer_ms)
            for d in fits[k].depths:
                own = fits[k].fixed_ms + d * fits[k].per_layer_ms
                errs.append((fx + d * sl) / own - 1.0)
        return float(np.sqrt(np.mean(np.square(errs)))) if errs else 0.0

    def _coord(self, width: float | WidthAxes) -> float:
        if self.geometry is None:
            if isinstance(width, tuple):
                raise AmoebaError("predicting separate attention/MLP widths needs the model geometry")
            return float(width)
        return float(self.geometry.scaled_dims(1, width).layer_params())

    def extrapolated(self, width: float | WidthAxes, attn_width: float | None = None) -> bool:
        x = self._coord(width_key(width, attn_width))
        return bool(x < self._x.min() - 1e-9 or x > self._x.max() + 1e-9)

    def coefficients(self, width: float | WidthAxes, attn_width: float | None = None) -> tuple[float, float]:
        """(fixed_ms, per_layer_ms) at ``width`` (a one-ratio width, a width key, or MLP width + ``attn_width``)."""
        w = width_key(width, attn_width)
        if w in self.fits:
            f = self.fits[w]
            return f.fixed_ms, f.per_layer_ms
        x = self._coord(w)
        if len(self._x) == 1:
            return float(self._fixed[0]), float(self._slope[0])
        order = np.argsort(self._x)
        xs, fx, sl = self._x[order], self._fixed[order], self._slope[order]
        # distinct coordinates only (two widths can share a physical size)
        xs_u, idx = np.unique(xs, return_index=True)
        fx, sl = fx[idx], sl[idx]
        if len(xs_u) == 1:
            return float(fx[0]), float(sl[0])
        if xs_u[0] <= x <= xs_u[-1]:
            return float(np.interp(x, xs_u, fx)), float(np.interp(x, xs_u, sl))
        i, j = (0, 1) if x < xs_u[0] else (-2, -1)
        t = (x - xs_u[i]) / (xs_u[j] - xs_u[i])
        f, k = fx[i] + t * (fx[j] - fx[i]), sl[i] + t * (sl[j] - sl[i])
        # physical floors for a noisy trend: a smaller layer costs at least its size's share of
        # the smallest measured one; a bigger layer at least as much as the biggest measured one
        floor = x / xs_u[0] if x < xs_u[0] else 1.0
        return float(max(f, floor * fx[i])), float(max(k, floor * sl[i]))

    def predict(self, depth: int, width: float | WidthAxes, attn_width: float | None = None) -> float:
        if depth < 1:
            raise AmoebaError(f"depth must be >= 1, got {depth}")
        fixed, slope = self.coefficients(width, attn_width)
        return fixed + depth * slope

    def is_extrapolated(self, depth: int, width: float | WidthAxes, attn_width: float | None = None) -> bool:
        """Outside the measured depths or widths (layer sizes)."""
        lo, hi = self.depth_range
        return self.extrapolated(width, attn_width) or not lo <= depth <= hi

    def _outside(self, depth: int, width: float | WidthAxes) -> float:
        """Distance outside the measured depths / layer sizes, relative to their span."""
        lo, hi = self.depth_range
        e_d = max(lo - depth, depth - hi, 0) / max(hi - lo, 1)
        x = self._coord(width_key(width))
        span = float(self._x.max() - self._x.min())
        e_w = max(self._x.min() - x, x - self._x.max(), 0.0) / span if span > 0 else 0.0
        return float(max(e_d, e_w))

    def estimate(self, depth: int, width: float | WidthAxes, attn_width: float | None = None) -> Prediction:
        """The prediction with its 90% interval (module docstring) and the extrapolation flag."""
        w = width_key(width, attn_width)
        ms = self.predict(depth, w)
        if w in self.fits:
            h_meas, h_width = self.fits[w].meas_rel, 0.0
        else:
            x = self._coord(w)
            near = np.argsort(np.abs(self._x - x))[:2]
            h_meas = max(list(self.fits.values())[i].meas_rel for i in near)
            h_width = self.h_width
        h = float(np.sqrt(h_meas**2 + (Z90 * self.s_fit) ** 2 + h_width**2)) * (1 + self._outside(depth, w))
        return Prediction(ms, ms / (1 + h), ms * (1 + h), self.is_extrapolated(depth, w))

    def holdout_errors(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Relative error (predicted / measured - 1) on each of ``rows``."""
        col = _value_column(rows)
        out = rows[["depth", "width", "p50_ms"] + (["ms"] if col == "ms" else [])
                   + (["attn_width"] if "attn_width" in rows.columns else [])].copy()
        est = [self.estimate(int(d), k) for d, k in zip(out["depth"], _rows_keys(out))]
        out["predicted_ms"] = [e.ms for e in est]
        out["predicted_lo_ms"] = [e.lo_ms for e in est]
        out["predicted_hi_ms"] = [e.hi_ms for e in est]
        out["extrapolated"] = [e.extrapolated for e in est]
        out["rel_error"] = out["predicted_ms"] / out[col] - 1.0
        out["in_interval"] = (out[col] >= out["predicted_lo_ms"]) & (out[col] <= out["predicted_hi_ms"])
        return out.reset_index(drop=True)

    def self_check(self, rows: pd.DataFrame) -> dict[str, Any]:
        """Leave-one-depth-out error on widths with >= 3 measured depths."""
        errs: list[float] = []
        col = _value_column(rows)
        for _, grp in rows.groupby(_rows_keys(rows), sort=False):
            g = grp.groupby("depth")[col].median()
            if len(g) < 3:
                continue
            for d in g.index:
                rest = g.drop(d)
                t0, slope = fit_line(rest.index.tolist(), rest.values.tolist())
                errs.append((t0 + d * slope) / g[d] - 1.0)
        if not errs:
            return {"n": 0}
        a = np.abs(np.asarray(errs))
        return {
            "n": len(errs),
            "median_abs_error": float(np.median(a)),
            "max_abs_error": float(a.max()),
            "within_5pct": float((a <= 0.05).mean()),
            "within_10pct": float((a <= 0.10).mean()),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "fixed(width) + depth * per_layer(width)",
            "s_fit": self.s_fit,
            "h_width": self.h_width,
            "widths": {
                _label(w): {"fixed_ms": f.fixed_ms, "per_layer_ms": f.per_layer_ms, "depths": list(f.depths)}
                for w, f in self.fits.items()
            },
        }


def sparse_depths(depths: Iterable[int]) -> tuple[int, ...]:
    """What a sparse plan measures per width: the shallowest, a middle and the deepest depth."""
    ds = sorted(set(int(d) for d in depths))
    if len(ds) <= 3:
        return tuple(ds)
    return (ds[0], ds[len(ds) // 2], ds[-1])


PER_LAYER_DEPTHS = (1, 2, 4)


def per_layer_depths(n_layers: int) -> tuple[int, ...]:
    """Whole models of these depths are timed in per-layer mode (those that fit the geometry)."""
    out = tuple(d for d in PER_LAYER_DEPTHS if d <= n_layers)
    if len(out) < 2:
        raise AmoebaError(f"per-layer mode needs a geometry with at least 2 layers, got {n_layers}")
    return out
