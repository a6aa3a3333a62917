"""The latency API other packages call (search, query, service, plots).

``latency_ms(device, flow, model, depth, width, ...)`` answers from, in order: a measured row,
a per-layer composed row, the predictor fitted on measured rows, and, for a roofline-only
device (a spec sheet), the roofline floor. Every answer says which of these it is
(:class:`LatencyEstimate.source`) and carries the others when they exist.

:class:`LatencyModel` loads a table and fits its predictor once, so a search or an HTTP
service can ask thousands of times cheaply; ``latency_ms`` keeps one per table (reloaded
when the file changes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, normalize_width
from profiler.device import DeviceSpec, load_device, profiles_root
from profiler.device import list_devices as _list_devices
from profiler.predict import LatencyPredictor
from profiler.roofline import Roofline, dtype_bytes, peak_dtype_for, roofline
from profiler.table import LatencyTable

log = logging.getLogger(__name__)

Source = Literal["measured", "per-layer", "predicted", "roofline"]
DEFAULT_PROMPT_LEN = 128
ROOFLINE_DEFAULT_VARIANT = "float16"


@dataclass(frozen=True)
class TableInfo:
    device: str
    flow: str
    model: str
    path: Path


@dataclass(frozen=True)
class LatencyEstimate:
    ms: float
    source: Source
    measured_ms: float | None = None
    predicted_ms: float | None = None
    roofline_ms: float | None = None


def list_devices(root: Path | None = None) -> list[str]:
    return _list_devices(root)


def list_tables(root: Path | None = None) -> list[TableInfo]:
    """Every ``<device>/<flow>-<model>.parquet`` under the profiles root."""
    from profiler.flows import FLOWS

    base = profiles_root(root)
    out: list[TableInfo] = []
    if not base.is_dir():
        return out
    for path in sorted(base.glob("*/*.parquet")):
        stem = path.stem
        flow = next((f for f in sorted(FLOWS, key=len, reverse=True) if stem.startswith(f + "-")), None)
        if flow is None:
            continue
        out.append(TableInfo(path.parent.name, flow, stem[len(flow) + 1 :], path))
    return out


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
    ) -> None:
        self.device, self.flow, self.model, self.geometry = device, flow, model, geometry
        self.phase, self.prompt_len, self.variant, self.table = phase, prompt_len, variant, table
        self._measured: dict[tuple[int, float], float] = {}
        self._per_layer: dict[tuple[int, float], float] = {}
        self.predictor: LatencyPredictor | None = None
        if table is not None:
            rows = table.rows(phase=phase, variant=variant, prompt_len=prompt_len, batch=1)
            for src, store in (("measured", self._measured), ("per-layer", self._per_layer)):
                sub = rows[rows["source"] == src]
                for d, w, ms in zip(sub["depth"], sub["width"], sub["p50_ms"]):
                    store[(int(d), round(float(w), 3))] = float(ms)
            measured = rows[rows["source"] == "measured"]
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
        return cls(spec, flow, model, geometry, phase, int(prompt_len), variant, table)

    def roofline_at(self, depth: int, width: float) -> Roofline | None:
        """The roofline of a shape at this table's weight type (None when the type is unknown)."""
        if self._wbytes is None or self.weight_dtype is None:
            return None
        g = self.geometry.scaled_dims(depth, width)
        return roofline(g, self.device, self.phase, self.prompt_len, self._wbytes, peak_dtype_for(self.weight_dtype))

    def roofline_ms(self, depth: int, width: float) -> float | None:
        rl = self.roofline_at(depth, width)
        return None if rl is None else rl.floor_ms

    def estimate(self, depth: int, width: float) -> LatencyEstimate:
        w = normalize_width(width)
        key = (int(depth), w)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if not 1 <= depth <= self.geometry.n_layers:
            raise AmoebaError(f"depth {depth} outside 1..{self.geometry.n_layers} for {self.model}")
        measured = self._measured.get(key)
        per_layer = self._per_layer.get(key)
        predicted = self.predictor.predict(depth, w) if self.predictor is not None else None
        floor = self.roofline_ms(depth, w)
        if measured is not None:
            est = LatencyEstimate(measured, "measured", measured, predicted, floor)
        elif per_layer is not None:
            est = LatencyEstimate(per_layer, "per-layer", None, predicted, floor)
        elif predicted is not None:
            est = LatencyEstimate(predicted, "predicted", None, predicted, floor)
        elif self.device.roofline_only and floor is not None:
            est = LatencyEstimate(floor, "roofline", None, None, floor)
        else:
            raise AmoebaError(
                f"no measurement or predictor for d{depth}-w{w:.3f} on {self.device.name}/{self.flow}/"
                f"{self.model} ({self.phase}, prompt_len {self.prompt_len})"
            )
        self._cache[key] = est
        return est


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
    device: str, flow: str, model: str, phase: str, prompt_len: int | None, variant: str | None, root: str, stamp: float
) -> LatencyModel:
    return LatencyModel.open(device, flow, model, phase, prompt_len, variant, Path(root))


def latency_ms(
    device: str,
    flow: str,
    model: str,
    depth: int,
    width: float,
    phase: str = "decode",
    prompt_len: int | None = None,
    variant: str | None = None,
    root: Path | None = None,
) -> LatencyEstimate:
    """Latency of one step of shape (depth, width); see the module docstring for the order of sources."""
    base = profiles_root(root)
    known = _list_devices(base)
    if device not in known:
        raise AmoebaError(f"unknown device {device!r}; known: {', '.join(known) or '(none)'}")
    path = base / device / f"{flow}-{model}.parquet"
    stamp = path.stat().st_mtime_ns if path.exists() else 0.0
    m = _cached_model(device, flow, model, phase, prompt_len, variant, str(base.resolve()), stamp)
    return m.estimate(depth, width)
