"""The latency API other packages call (search, query, service, plots).

``latency_ms(device, flow, model, depth, width, ...)`` answers from, in order: a measured row,
a per-layer composed row, the predictor fitted on measured rows, and, for a roofline-only
device (a spec sheet), the roofline floor. Every answer says which of these it is
(:class:`LatencyEstimate.source`) and carries the others when they exist.

Few-shot lines (``amoeba profile --few-shot K``, :mod:`profiler.transfer`) also hold
``transferred`` rows: they answer after measured and per-layer rows and before the predictor
(a few-shot line has K measured shapes, too few for the predictor alone; the transfer used every
line of the store). Off the table's grid, the predictor of such a line is fitted on its measured
and transferred rows together, and its answers are labelled ``transferred`` too, with the
predictor's interval widened by the transferred rows' median relative interval. A measured row
always wins over the transferred row of the same shape, so later measurements replace
transferred answers one by one.

Every estimate has a 90% interval (``lo_ms``/``hi_ms``) and an ``extrapolated`` flag. Measured
and per-layer rows answer in drift-corrected milliseconds (``ratio * reference level``, see
:meth:`profiler.table.LatencyTable.corrected`) with their ratio interval scaled the same way
(legacy rows: their raw median and its order-statistic interval); predictions carry the
predictor's interval (:meth:`profiler.predict.LatencyPredictor.estimate`); a roofline floor is a
bound, not an estimate, and has no interval. Per-layer rows deeper than the whole models they
were composed from are flagged extrapolated.

A table may hold rows timed with several thread counts and protocols: a model uses one thread
count (``threads``, default: the one with the most measured rows) and, per shape, prefers the
paired protocol's row over a legacy one.

:class:`LatencyModel` loads a table and fits its predictor once, so a search or an HTTP
service can ask thousands of times cheaply; ``latency_ms`` keeps one per table (reloaded
when the file changes).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, WidthAxes, grid_key, width_key
from profiler.device import DeviceSpec, load_device, profiles_root
from profiler.device import list_devices as _list_devices
from profiler.measure import LEGACY
from profiler.predict import LatencyPredictor
from profiler.roofline import Roofline, dtype_bytes, peak_dtype_for, roofline
from profiler.table import LatencyTable, row_width_key

log = logging.getLogger(__name__)

Source = str  # one of profiler.table.SOURCES (extend that tuple for a new source)
DEFAULT_PROMPT_LEN = 128
ROOFLINE_DEFAULT_VARIANT = "float16"


@dataclass(frozen=True)
class TableInfo:
    device: str
    flow: str
    model: str
    store: str  # the store's URL


@dataclass(frozen=True)
class LatencyEstimate:
    ms: float
    source: Source
    measured_ms: float | None = None
    predicted_ms: float | None = None
    roofline_ms: float | None = None
    lo_ms: float | None = None  # 90% interval of ``ms`` (None: a roofline bound, or unknown)
    hi_ms: float | None = None
    extrapolated: bool = False  # outside the measured depths/widths


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def list_devices(root: Path | None = None) -> list[str]:
    return _list_devices(root)


def list_tables(root: Path | str | None = None) -> list[TableInfo]:
    """Every (device, flow, model) table with rows in the store of ``root`` (:func:`profiler.store.open_store`)."""
    from profiler.store import open_store

    store = open_store(root)
    return [TableInfo(d, f, m, store.url) for d, f, m in store.list_tables()]


class LatencyModel:
    """Cached estimates for one (device, flow, model, phase, prompt_len, variant)."""

    def __init__(
        self,
        device: DeviceSpec,
        flow: str,
        model: str,
        geometry: ModelGeometry,
        phase: str,
        prompt_len: int,
        variant: str,
        table: LatencyTable | None,
        threads: int | None = None,
    ) -> None:
        self.device, self.flow, self.model, self.geometry = device, flow, model, geometry
        self.phase, self.prompt_len, self.variant, self.table = phase, prompt_len, variant, table
        # (depth, width) -> (ms, lo_ms, hi_ms)
        self._measured: dict[tuple[int, float], tuple[float, float | None, float | None]] = {}
        self._per_layer: dict[tuple[int, float], tuple[float, float | None, float | None]] = {}
        self._transferred: dict[tuple[int, float], tuple[float, float | None, float | None]] = {}
        self._transfer_rel: tuple[float, float] | None = None  # median lo/ms, hi/ms of transferred rows
        self._measured_depths: dict[float | WidthAxes, tuple[int, int]] = {}  # by width key
        self.predictor: LatencyPredictor | None = None
        self.threads = threads
        if table is not None:
            rows = table.rows(phase=phase, variant=variant, prompt_len=prompt_len, batch=1)
            self.threads = threads = _pick_threads(rows, threads)
            rows = rows[rows["threads"] == threads] if threads is not None else rows
            # one row per (shape, source): the paired protocol's over a legacy one, then the newest
            rows = rows.assign(_paired=rows["protocol"] != LEGACY).sort_values(["_paired", "created"])
            rows = rows.drop_duplicates(["depth", "width", "attn_width", "source"], keep="last").drop(columns="_paired")
            rows = table.corrected(rows)
            for src, store in (("measured", self._measured), ("per-layer", self._per_layer),
                               ("transferred", self._transferred)):
                sub = rows[rows["source"] == src]
                for d, w, a, ms, lo, hi in zip(sub["depth"], sub["width"], sub["attn_width"], sub["ms"], sub["ms_lo"],
                                               sub["ms_hi"]):
                    store[(int(d), row_width_key(w, a))] = (float(ms), _num(lo), _num(hi))
            measured = rows[rows["source"] == "measured"]
            for d, w, a in zip(measured["depth"], measured["width"], measured["attn_width"]):
                k = row_width_key(w, a)
                lo_d, hi_d = self._measured_depths.get(k, (int(d), int(d)))
                self._measured_depths[k] = (min(lo_d, int(d)), max(hi_d, int(d)))
            if self._transferred:  # a few-shot line: the predictor also learns from its transferred rows
                measured = _with_transferred(self, rows)
            try:
                self.predictor = LatencyPredictor.fit(measured, geometry)
            except AmoebaError as e:
                log.info("no predictor for %s/%s/%s: %s", device.name, flow, model, e)
        # a variant names its weight type (float32, f16, q4_0) or, for variants named otherwise
        # (tvm's tuned-32), the table's environment record of that variant holds the dtype
        self.weight_dtype: str | None = None
        self._wbytes: float | None = None
        env = (table.header.get("environments") or {}).get(variant, {}) if table is not None else {}
        for dtype in (variant, env.get("dtype")):
            if dtype is None:
                continue
            try:
                self._wbytes, self.weight_dtype = dtype_bytes(dtype), dtype
                break
            except AmoebaError:  # not a dtype name
                continue
        self._cache: dict[tuple[int, float], LatencyEstimate] = {}

    @classmethod
    def open(
        cls,
        device: str,
        flow: str,
        model: str,
        phase: str = "decode",
        prompt_len: int | None = None,
        variant: str | None = None,
        root: Path | None = None,
        threads: int | None = None,
    ) -> LatencyModel:
        from profiler.flows import FLOWS

        if phase not in ("prefill", "decode"):
            raise AmoebaError(f"phase must be prefill or decode, got {phase!r}")
        spec = load_device(device, root)
        if flow not in FLOWS:
            raise AmoebaError(f"unknown flow {flow!r}; known: {', '.join(sorted(FLOWS))}")
        tables = [t for t in list_tables(root) if t.device == device]
        if spec.roofline_only:
            geometry = ModelGeometry.resolve(model)
            return cls(
                spec,
                flow,
                model,
                geometry,
                phase,
                prompt_len or DEFAULT_PROMPT_LEN,
                variant or ROOFLINE_DEFAULT_VARIANT,
                None,
            )
        if not any(t.flow == flow and t.model == model for t in tables):
            known = ", ".join(f"{t.flow}/{t.model}" for t in tables) or "(none)"
            raise AmoebaError(
                f"no latency table for device {device!r}, flow {flow!r}, model {model!r}; known on {device}: {known}"
            )
        table = LatencyTable(device, flow, model, root)
        geometry = _header_geometry(table, model)
        variants = [v for v in table.header.get("variants", []) if v in table.variants] or table.variants
        if variant is None:
            if not variants:
                raise AmoebaError(f"latency table {table.path} has no rows")
            variant = variants[0]
            if len(variants) > 1:
                log.info("table %s has variants %s; using %s", table.path, variants, variant)
        elif variant not in variants:
            raise AmoebaError(f"variant {variant!r} not in {table.path}; known: {', '.join(variants)}")
        rows = table.rows(phase=phase, variant=variant)
        if prompt_len is None:
            if rows.empty:
                raise AmoebaError(f"no {phase} rows in {table.path} for variant {variant}")
            prompt_len = int(rows["prompt_len"].mode().iloc[0])
        elif rows[rows["prompt_len"] == prompt_len].empty:
            known_p = sorted(set(rows["prompt_len"].tolist()))
            raise AmoebaError(f"no {phase} rows with prompt_len {prompt_len} in {table.path}; known: {known_p}")
        return cls(spec, flow, model, geometry, phase, int(prompt_len), variant, table, threads)

    def roofline_at(self, depth: int, width: float | WidthAxes) -> Roofline | None:
        """The roofline of a shape at this table's weight type (None when the type is unknown)."""
        if self._wbytes is None or self.weight_dtype is None:
            return None
        g = self.geometry.scaled_dims(depth, width)
        return roofline(g, self.device, self.phase, self.prompt_len, self._wbytes, peak_dtype_for(self.weight_dtype))

    def roofline_ms(self, depth: int, width: float | WidthAxes) -> float | None:
        rl = self.roofline_at(depth, width)
        return None if rl is None else rl.floor_ms

    def estimate(self, depth: int, width: float | WidthAxes, attn_width: float | None = None) -> LatencyEstimate:
        """Latency of (depth, width); ``width`` may be a width key, or the MLP width with ``attn_width``."""
        w = width_key(width, attn_width)
        key = (int(depth), w)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if not 1 <= depth <= self.geometry.n_layers:
            raise AmoebaError(f"depth {depth} outside 1..{self.geometry.n_layers} for {self.model}")
        measured = self._measured.get(key) or self._twin(self._measured, int(depth), w)
        per_layer = self._per_layer.get(key) or self._twin(self._per_layer, int(depth), w)
        pred = self.predictor.estimate(depth, w) if self.predictor is not None else None
        predicted = pred.ms if pred is not None else None
        floor = self.roofline_ms(depth, w)
        if measured is not None:
            ms, lo, hi = measured
            est = LatencyEstimate(ms, "measured", ms, predicted, floor, lo, hi, False)
        elif per_layer is not None:
            ms, lo, hi = per_layer
            d_lo, d_hi = self._measured_depths.get(w, (depth, depth))
            est = LatencyEstimate(ms, "per-layer", None, predicted, floor, lo, hi, not d_lo <= depth <= d_hi)
        elif key in self._transferred:
            ms, lo, hi = self._transferred[key]
            est = LatencyEstimate(ms, "transferred", None, predicted, floor, lo, hi, False)
        elif pred is not None and self._transfer_rel is not None:  # interpolated between transferred rows
            lo_r, hi_r = self._transfer_rel
            est = LatencyEstimate(pred.ms, "transferred", None, pred.ms, floor, max(pred.lo_ms, 0.0) * lo_r, pred.hi_ms * hi_r,
                                  pred.extrapolated)
        elif pred is not None:
            est = LatencyEstimate(pred.ms, "predicted", None, pred.ms, floor, pred.lo_ms, pred.hi_ms, pred.extrapolated)
        elif self.device.roofline_only and floor is not None:
            est = LatencyEstimate(floor, "roofline", None, None, floor)
        else:
            raise AmoebaError(
                f"no measurement or predictor for {grid_key(depth, w)} on {self.device.name}/{self.flow}/"
                f"{self.model} ({self.phase}, prompt_len {self.prompt_len})"
            )
        self._cache[key] = est
        return est

    def _twin(self, store: dict[tuple[int, Any], tuple[float, float | None, float | None]], depth: int,
              w: float | WidthAxes) -> tuple[float, float | None, float | None] | None:
        """A row of ``store`` at ``depth`` of the other width form that cuts the very same network as ``w``
        (SmolLM2 ``w0.750`` and ``a0.667-m0.750``: 6 heads in 3 groups, 1152 channels): its timing is this
        shape's. (Two one-ratio widths that round to one network keep their separate rows/predictions, as before.)"""
        def sig(k: float | WidthAxes) -> tuple[int, int, int]:
            g = self.geometry.scaled_dims(1, k)
            return g.n_heads, g.n_kv_heads, g.intermediate

        want = sig(w)
        for (d, k), v in store.items():  # across the two forms only: one-ratio rows keep their own answers
            if d == depth and k != w and (isinstance(k, tuple) or isinstance(w, tuple)) and sig(k) == want:
                return v
        return None


def _with_transferred(m: LatencyModel, rows: pd.DataFrame) -> pd.DataFrame:
    """Measured rows plus the transferred rows of shapes not measured (the predictor's input for a
    few-shot line), and the median relative interval of the transferred rows (``m._transfer_rel``).
    A transferred row without a ratio interval takes ``p10_ms``/``p90_ms``, where it is stored."""
    import numpy as np

    t = rows[rows["source"] == "transferred"]
    for d, w, a, p10, p90 in zip(t["depth"], t["width"], t["attn_width"], t["p10_ms"], t["p90_ms"]):
        key = (int(d), row_width_key(w, a))
        ms, lo, hi = m._transferred[key]
        m._transferred[key] = (ms, lo if lo is not None else float(p10), hi if hi is not None else float(p90))
    vals = list(m._transferred.values())
    m._transfer_rel = (float(np.median([lo / ms for ms, lo, _ in vals])), float(np.median([hi / ms for ms, _, hi in vals])))
    measured = rows[rows["source"] == "measured"]
    have = {(int(d), row_width_key(w, a)) for d, w, a in zip(measured["depth"], measured["width"], measured["attn_width"])}
    extra = t[[(int(d), row_width_key(w, a)) not in have for d, w, a in zip(t["depth"], t["width"], t["attn_width"])]]
    return pd.concat([measured, extra], ignore_index=True)


def _pick_threads(rows: pd.DataFrame, threads: int | None) -> int | None:
    """The thread count a model answers for: the one asked for, else the one with the most
    measured rows (ties: the larger count)."""
    if rows.empty:
        return threads
    if threads is not None:
        if not (rows["threads"] == threads).any():
            known = sorted(set(int(t) for t in rows["threads"]))
            raise AmoebaError(f"no rows timed with {threads} threads; known: {known}")
        return threads
    m = rows[rows["source"] == "measured"]
    counts = (m if len(m) else rows)["threads"].value_counts()
    best = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[-1][0]
    if len(counts) > 1:
        log.info("rows timed with threads %s; using %s", sorted(counts.index.tolist()), best)
    return int(best)


def _header_geometry(table: LatencyTable, model: str) -> ModelGeometry:
    g = table.header.get("geometry")
    if g is None:
        return ModelGeometry.resolve(model)
    try:
        return ModelGeometry(**g)
    except TypeError as e:
        raise AmoebaError(f"corrupt table header {table.header_path}: geometry {e}") from None


@lru_cache(maxsize=64)
def _cached_model(
    device: str, flow: str, model: str, phase: str, prompt_len: int | None, variant: str | None, root: str, stamp: float,
    threads: int | None = None,
) -> LatencyModel:
    return LatencyModel.open(device, flow, model, phase, prompt_len, variant, root if "://" in root else Path(root),
                             threads)


def latency_ms(
    device: str,
    flow: str,
    model: str,
    depth: int,
    width: float | WidthAxes,
    phase: str = "decode",
    prompt_len: int | None = None,
    variant: str | None = None,
    root: Path | str | None = None,
    threads: int | None = None,
    attn_width: float | None = None,
) -> LatencyEstimate:
    """Latency of one step of shape (depth, width); see the module docstring for the order of sources."""
    from profiler.store import open_store

    known = _list_devices(root)
    if device not in known:
        raise AmoebaError(f"unknown device {device!r}; known: {', '.join(known) or '(none)'}")
    where = root if isinstance(root, str) and "://" in root else str(profiles_root(root).resolve())
    stamp = open_store(root).revision()  # a new row anywhere in the store: models are rebuilt
    m = _cached_model(device, flow, model, phase, prompt_len, variant, where, stamp, threads)
    return m.estimate(depth, width, attn_width)
