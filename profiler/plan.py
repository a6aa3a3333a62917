"""A profile run: which shapes to time, timing them, and writing each row as soon as it exists.

Plain mode times every (depth, width, phase) of the grid. ``sparse`` times only what the
predictor needs (:func:`profiler.predict.sparse_depths` x all widths). ``per_layer`` times
whole models of depth 1, 2 and 4 (embedding and head included, written as ``measured`` rows)
and composes every requested depth as ``t0 + depth * slope`` (written as ``per-layer`` rows).
Per-layer mode needs nothing from the flow beyond ``build``/``run_once``, so it works for any flow.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.device import DeviceSpec, ensure_device
from profiler.flows import PHASES, FlowConfig, Workload, flow_class, make_flow
from profiler.measure import LatencyStats, MeasureConfig, environment, measure
from profiler.predict import fit_line, per_layer_depths, sparse_depths
from profiler.table import LatencyTable, now_utc, row_key

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfilePlan:
    device: str
    flow: str
    model: str
    geometry: ModelGeometry
    depths: tuple[int, ...]
    widths: tuple[float, ...]
    phases: tuple[str, ...] = PHASES
    prompt_len: int = 128
    batch: int = 1
    config: FlowConfig = field(default_factory=FlowConfig)
    sparse: bool = False
    per_layer: bool = False
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    redo_contended: bool = False  # re-time present rows whose every sample was contended

    def __post_init__(self) -> None:
        n = self.geometry.n_layers
        for d in self.depths:
            if not 1 <= d <= n:
                raise AmoebaError(f"depth {d} outside 1..{n} for model {self.model}")
        for w in self.widths:
            self.geometry.check_width(w)  # zero heads/channels: refused before any table is touched
        for p in self.phases:
            if p not in PHASES:
                raise AmoebaError(f"unknown phase {p!r}; known: {', '.join(PHASES)}")
        if not self.phases:
            raise AmoebaError("no phases given")
        if self.prompt_len < 1 or self.prompt_len + 2 > self.geometry.max_position:
            raise AmoebaError(f"prompt_len must be in 1..{self.geometry.max_position - 2} for {self.model}")
        if self.sparse and self.per_layer:
            raise AmoebaError("--sparse and --per-layer are alternatives; choose one")
        if self.per_layer:
            per_layer_depths(n)

    @property
    def measured_depths(self) -> tuple[int, ...]:
        if self.per_layer:
            return per_layer_depths(self.geometry.n_layers)
        if self.sparse:
            return sparse_depths(self.depths)
        return tuple(sorted(set(self.depths)))

    def points(self) -> list[tuple[float, int, str]]:
        """(width, depth, phase) to time, deepest first per width (the flow reuses weights)."""
        return [(w, d, p) for w in self.widths for d in sorted(self.measured_depths, reverse=True) for p in self.phases]


@dataclass
class ProfileResult:
    table: Path
    written: int = 0
    skipped: int = 0
    composed: int = 0
    contended: int = 0  # rows where no uncontended sample could be had (see profiler.measure)
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)


ProgressFn = Callable[[str, int, int], None]  # (description, done, total)


def run_profile(plan: ProfilePlan, root: Path | str | None = None, progress: ProgressFn | None = None) -> ProfileResult:
    t_start = time.perf_counter()
    spec = ensure_device(plan.device, root, threads=plan.config.threads or None, flow_device=plan.config.device)
    _check_measurable(spec, plan)
    flow = make_flow(plan.flow, plan.config)
    table = LatencyTable(plan.device, plan.flow, plan.model, root)
    variant = flow.variant
    env = environment(plan.config.threads, plan.config.dtype, extra={"flow": flow.environment()})
    table.write_header(
        {"geometry": plan.geometry.to_dict(), "dtype": plan.config.dtype, "device_spec": spec.name},
        environment=env,
        variant=variant,
    )
    result = ProfileResult(table.path)
    cpu_threads = plan.config.threads if plan.config.device == "cpu" and plan.config.threads > 0 else None
    points = plan.points()
    rounds = plan.measure.rounds
    total = len(points) * rounds
    done = 0
    todo: list[_Point] = []
    for w, d, phase in points:
        key = row_key(variant, d, w, phase, plan.batch, plan.prompt_len, "measured")
        old = table.get(key)
        redo = old is not None and plan.redo_contended and int(old["discarded"]) >= int(old["n"])
        if old is not None and not redo:
            result.skipped += 1
            done += rounds
            if progress:
                progress(f"d{d}-w{w:.3f} {phase} (present)", done, total)
            continue
        todo.append(_Point(w, d, phase, key, redo))
    round_cfg = plan.measure.per_round()
    block_size = 1 if rounds == 1 else BLOCK_SHAPES  # one shape alive at a time without rounds
    for block in _blocks(todo, block_size, lambda d, w: 4 * plan.geometry.scaled_dims(d, w).n_params()):
        arts: dict[tuple[int, float], object] = {}
        try:
            for r in range(rounds):
                for pt in block if r % 2 == 0 else block[::-1]:  # alternate the order: no shape always first
                    if (pt.d, pt.w) not in arts:
                        arts[(pt.d, pt.w)] = flow.build(plan.geometry.scaled_dims(pt.d, pt.w))
                    work = Workload(pt.phase, plan.prompt_len, plan.batch)  # type: ignore[arg-type]
                    stats = measure(functools.partial(flow.run_once, arts[(pt.d, pt.w)], work), round_cfg, cpu_threads)
                    pt.samples.extend(stats.samples_ms)
                    pt.discarded += stats.discarded
                    done += 1
                    if progress:
                        tag = f" round {r + 1}/{rounds}" if rounds > 1 else ""
                        progress(f"d{pt.d}-w{pt.w:.3f} {pt.phase}{tag} {stats.p50_ms:.2f} ms", done, total)
        finally:
            for a in arts.values():
                flow.close(a)
        for pt in block:  # a block's rows are written together, once every round has run
            _write_row(table, pt, result)
    if plan.per_layer:
        result.composed = _compose(plan, table, variant)
    result.seconds = time.perf_counter() - t_start
    return result


BLOCK_SHAPES = 4  # shapes measured round-robin together (alive at once) when rounds > 1
BLOCK_BYTES = 6 * 1024**3  # ... and at most this many weight bytes (fp32 estimate) alive at once


@dataclass
class _Point:
    w: float
    d: int
    phase: str
    key: dict
    redo: bool
    samples: list[float] = field(default_factory=list)
    discarded: int = 0


def _blocks(points: list[_Point], shapes: int, nbytes: Callable[[int, float], int],
            max_bytes: int = BLOCK_BYTES) -> list[list[_Point]]:
    """Consecutive points grouped so that a group holds at most ``shapes`` distinct (d, w) whose
    weights (``nbytes``) fit ``max_bytes`` together (a bigger shape gets a group of its own)."""
    out: list[list[_Point]] = []
    seen: set[tuple[int, float]] = set()
    used = 0
    for pt in points:
        shape = (pt.d, pt.w)
        if shape not in seen:
            b = nbytes(*shape)
            if not out or len(seen) >= shapes or (seen and used + b > max_bytes):
                out.append([])
                seen, used = set(), 0
            seen.add(shape)
            used += b
        out[-1].append(pt)
    return out


def _write_row(table: LatencyTable, pt: _Point, result: ProfileResult) -> None:
    stats = LatencyStats.from_samples(pt.samples, pt.discarded)
    row = {
        **pt.key,
        "p50_ms": stats.p50_ms,
        "p10_ms": stats.p10_ms,
        "p90_ms": stats.p90_ms,
        "n": stats.n,
        "discarded": stats.discarded,
        "samples_ms": list(stats.samples_ms),
        "created": now_utc(),
    }
    if pt.redo:
        table.replace(row)
    elif not table.append(row):
        return
    result.written += 1
    result.rows.append(row)
    result.contended += int(stats.discarded == stats.n)


def _check_measurable(spec: DeviceSpec, plan: ProfilePlan) -> None:
    if spec.roofline_only:
        raise AmoebaError(
            f"device {spec.name} is roofline-only (a spec sheet, not this machine); "
            f"profile it on the device itself, or use `amoeba predict` for its roofline"
        )
    if (spec.kind == "gpu") != (plan.config.device == "cuda"):
        raise AmoebaError(f"device {spec.name} is a {spec.kind} but the flow runs on {plan.config.device}")


def _compose(plan: ProfilePlan, table: LatencyTable, variant: str) -> int:
    """Per-layer rows for every requested depth, from the measured depth-1/2/4 rows."""
    written = 0
    for phase in plan.phases:
        rows = table.rows(phase=phase, variant=variant, prompt_len=plan.prompt_len, batch=plan.batch, source="measured")
        for w in plan.widths:
            sub = rows[(rows["width"].round(3) == round(w, 3)) & rows["depth"].isin(plan.measured_depths)]
            if sub["depth"].nunique() < 2:
                continue
            t0, slope = fit_line(sub["depth"], sub["p50_ms"])
            for d in plan.depths:
                key = row_key(variant, d, w, phase, plan.batch, plan.prompt_len, "per-layer")
                p10 = _compose_q(sub, "p10_ms", d)
                p90 = _compose_q(sub, "p90_ms", d)
                row = {
                    **key,
                    "p50_ms": t0 + d * slope,
                    "p10_ms": p10,
                    "p90_ms": p90,
                    "n": int(sub["n"].sum()),
                    "discarded": int(sub["discarded"].sum()),
                    "samples_ms": [],
                    "created": now_utc(),
                }
                old = table.get(key)
                if old is None:
                    written += int(table.append(row))
                elif not math.isclose(float(old["p50_ms"]), row["p50_ms"], rel_tol=1e-9):
                    table.replace(row)  # its measured inputs were re-timed (--redo-contended)
                    written += 1
    return written


def _compose_q(sub: pd.DataFrame, col: str, depth: int) -> float:
    t0, slope = fit_line(sub["depth"], sub[col])
    return t0 + depth * slope


def make_plan(
    device: str,
    flow: str,
    model: str,
    depths: tuple[int, ...] | None,
    widths: tuple[float, ...],
    phases: tuple[str, ...],
    prompt_len: int,
    dtype: str,
    threads: int,
    sparse: bool = False,
    per_layer: bool = False,
    batch: int = 1,
    measure_cfg: MeasureConfig | None = None,
    torch_device: str = "cpu",
    options: dict | None = None,
    redo_contended: bool = False,
) -> ProfilePlan:
    """Validate everything a profile needs before anything is written."""
    geometry = ModelGeometry.resolve(model)
    flow_class(flow)  # unknown flow -> error listing the known ones
    name = model if model in ModelGeometry.preset_names() else geometry.name
    ds = depths or tuple(range(1, geometry.n_layers + 1))
    return ProfilePlan(
        device=device,
        flow=flow,
        model=name,
        geometry=geometry,
        depths=tuple(ds),
        widths=tuple(widths),
        phases=tuple(phases),
        prompt_len=prompt_len,
        batch=batch,
        config=FlowConfig(dtype=dtype, threads=threads, device=torch_device, options=options or {}),
        sparse=sparse,
        per_layer=per_layer,
        measure=measure_cfg or MeasureConfig(),
        redo_contended=redo_contended,
    )
