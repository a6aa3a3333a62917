"""A profile run: which shapes to time, timing them, and writing each row as soon as it exists.

Plain mode times every (depth, width, phase) of the grid. ``sparse`` times only what the
predictor needs (:func:`profiler.predict.sparse_depths` x all widths). ``per_layer`` times
whole models of depth 1, 2 and 4 (embedding and head included, written as ``measured`` rows)
and composes every requested depth as ``t0 + depth * slope`` (written as ``per-layer`` rows).
Per-layer mode needs nothing from the flow beyond ``build``/``run_once``, so it works for any flow.

Every mode times its shapes by the paired protocol (:mod:`profiler.measure`): per phase, the
shapes are cut into blocks of at most ``BLOCK_SHAPES`` and each block is timed interleaved,
sample by sample, with the reference shape (:attr:`ProfilePlan.reference`: the full-size model,
or in per-layer mode the deepest whole model timed). Memory: the reference stays loaded for the
whole run, so a block's shapes and the reference must fit ``BLOCK_BYTES`` together (fp32
weight estimate, :func:`_blocks`; less when the machine has less than ``MEMORY_FACTOR`` times that
available, :func:`block_budget`); a shape too big for that is timed in a block of its own (the
reference and it: two models), and a plan where even those two exceed the memory available is
refused before anything is timed (:func:`_check_memory`).

Separate attention/MLP widths: with ``attn_widths`` the plan's width points are every
(attention width, MLP width) pair, ``d24-a0.667-m0.750`` (:func:`amoeba_core.shape.width_key`), and
their rows carry ``attn_width``; without it, the one-ratio widths as before. Random-weight models
get their sizes from ``geometry.scaled_dims(depth, key)`` either way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, WidthAxes, width_key
from profiler._blocks import (  # BLOCK_BYTES, MEMORY_FACTOR: importable from here as before the split
    BLOCK_BYTES,  # noqa: F401
    BLOCK_SHAPES,
    MEMORY_FACTOR,  # noqa: F401
    _blocks,
    _check_memory,
    _Point,
    _weight_bytes,
    block_budget,
)
from profiler._compose import _compose
from profiler.device import DeviceSpec, ensure_device
from profiler.flows import PHASES, FlowConfig, Workload, flow_class, make_flow
from profiler.flows.options import FlowOptions, parse_options
from profiler.measure import LatencyStats, MeasureConfig, PairedStats, environment, measure_paired
from profiler.predict import per_layer_depths, sparse_depths
from profiler.table import LatencyTable, now_utc, row_key
from amoeba_core.shape import grid_key

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
    redo_contended: bool = False  # re-time present rows whose util diagnostic is below measure.min_util
    reference_shape: tuple[int, float] | None = None  # (depth, width); default: see `reference`
    attn_widths: tuple[float, ...] = ()  # given: time every (attention width, MLP width) pair instead

    def __post_init__(self) -> None:
        n = self.geometry.n_layers
        for d in self.depths:
            if not 1 <= d <= n:
                raise AmoebaError(f"depth {d} outside 1..{n} for model {self.model}")
        for w in self.widths:
            self.geometry.check_width(w, "mlp" if self.attn_widths else "both")  # refused before any table is touched
        for a in self.attn_widths:
            self.geometry.check_width(a, "attn")  # a whole number of heads the KV-group structure allows
        if self.attn_widths and self.per_layer:
            raise AmoebaError("--attn-widths is not supported with --per-layer yet; use --sparse or a full grid")
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
        if self.reference_shape is not None:
            d, w = self.reference_shape
            if not 1 <= d <= n or not 0 < w <= 1:
                raise AmoebaError(f"reference shape d{d}-w{w} outside depths 1..{n}, widths (0, 1]")

    @property
    def reference(self) -> tuple[int, float]:
        """The shape every block is paired with: the full-size model (deepest, width 1); in
        per-layer mode the deepest whole model timed."""
        if self.reference_shape is not None:
            return int(self.reference_shape[0]), round(float(self.reference_shape[1]), 3)
        if self.per_layer:
            return max(per_layer_depths(self.geometry.n_layers)), 1.0
        return self.geometry.n_layers, 1.0

    @property
    def measured_depths(self) -> tuple[int, ...]:
        if self.per_layer:
            return per_layer_depths(self.geometry.n_layers)
        if self.sparse:
            return sparse_depths(self.depths)
        return tuple(sorted(set(self.depths)))

    @property
    def width_points(self) -> list[float | WidthAxes]:
        """The plan's width keys: one-ratio widths, or every (attention, MLP) pair with ``attn_widths``."""
        if not self.attn_widths:
            return [width_key(w) for w in self.widths]
        return [width_key(m, a) for a in self.attn_widths for m in self.widths]

    def points(self) -> list[tuple[float | WidthAxes, int, str]]:
        """(width key, depth, phase) to time, deepest first per width (the flow reuses weights)."""
        return [(w, d, p) for w in self.width_points for d in sorted(self.measured_depths, reverse=True)
                for p in self.phases]


@dataclass
class ProfileResult:
    table: Path
    written: int = 0
    skipped: int = 0
    composed: int = 0
    contended: int = 0  # rows whose median util (CPU use per thread) is below min_util: a diagnostic
    min_util: float = 0.85
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)


ProgressFn = Callable[[str, int, int], None]  # (description, done, total)


def run_profile(plan: ProfilePlan, root: Path | str | None = None, progress: ProgressFn | None = None) -> ProfileResult:
    """Time the plan's missing rows by the paired protocol (:mod:`profiler.measure`), block by block.

    Per phase, the plan's shapes are cut into blocks (:func:`_blocks`); each block is timed
    interleaved with the reference shape (:attr:`ProfilePlan.reference`), whose artifact is
    built once and stays alive for the whole run. A block's rows are written together once all
    its rounds have run, and its reference samples are added to the table's reference level.
    The reference's own row (ratio 1) is written after the last block of its phase, from all
    its samples of this run.
    """
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
    result = ProfileResult(table.path, min_util=plan.measure.min_util)
    cpu_threads = plan.config.threads if plan.config.device == "cpu" and plan.config.threads > 0 else None
    threads = plan.config.threads
    versions = json.dumps({**env["versions"], "python": env["python"]}, sort_keys=True)
    ref_d, ref_w = plan.reference
    ref_name = grid_key(ref_d, ref_w)
    nbytes = functools.partial(_weight_bytes, plan.geometry)
    rounds = plan.measure.rounds

    def key(d: int, w: float | WidthAxes, phase: str) -> dict:
        return row_key(variant, d, w, phase, plan.batch, plan.prompt_len, "measured", threads, plan.measure.protocol)

    # what to time, per phase: the plan's shapes (the reference apart) and the reference's own row
    work: dict[str, tuple[list[_Point], _Point | None]] = {}
    done = total = 0
    for phase in plan.phases:
        todo: list[_Point] = []
        ref_pt: _Point | None = None
        shapes = [(d, w) for w, d, p in plan.points() if p == phase]
        if (ref_d, width_key(ref_w)) not in set(shapes):
            shapes.append((ref_d, ref_w))  # the reference's row is written even when off the grid
        for d, w in shapes:
            k = key(d, w, phase)
            old = table.get(k)
            redo = old is not None and plan.redo_contended and _contended(old, plan.measure.min_util)
            total += rounds
            if old is not None and not redo:
                result.skipped += 1
                done += rounds
                if progress:
                    progress(f"{grid_key(d, w)} {phase} (present)", done, total)
                continue
            pt = _Point(w, d, phase, k, redo)
            if (d, w) == (ref_d, width_key(ref_w)):
                ref_pt = pt
            else:
                todo.append(pt)
        work[phase] = (todo, ref_pt)
    _check_memory(plan, nbytes, [pt for todo, _ in work.values() for pt in todo])

    ref_art = None
    try:
        for phase, (todo, ref_pt) in work.items():
            if not todo and ref_pt is None:
                continue
            if ref_art is None:
                ref_art = flow.build(plan.geometry.scaled_dims(ref_d, ref_w))
            work_load = Workload(phase, plan.prompt_len, plan.batch)  # type: ignore[arg-type]
            ref_samples: list[float] = []
            ref_util: list[float] = []
            blocks = _blocks(todo, BLOCK_SHAPES, nbytes, block_budget(), nbytes(ref_d, ref_w)) if todo else [[]]
            for block in blocks:
                # from the current reference artifact: a rebuild in the previous block replaced (and closed) it
                ref_fn = functools.partial(flow.run_once, ref_art, work_load)
                arts: dict[tuple[int, float], object] = {}
                try:
                    for pt in block:
                        if (pt.d, pt.w) not in arts:
                            arts[(pt.d, pt.w)] = flow.build(plan.geometry.scaled_dims(pt.d, pt.w))
                    fns = [functools.partial(flow.run_once, arts[(pt.d, pt.w)], work_load) for pt in block]

                    def rebuild(block: list[_Point] = block, arts: dict = arts) -> tuple[list, Callable]:
                        """Close and build again the reference and this block's shapes (MeasureConfig.rebuild)."""
                        nonlocal ref_art
                        flow.close(ref_art)
                        ref_art = None
                        ref_art = flow.build(plan.geometry.scaled_dims(ref_d, ref_w))
                        for k in list(arts):
                            flow.close(arts.pop(k))
                            arts[k] = flow.build(plan.geometry.scaled_dims(*k))
                        return ([functools.partial(flow.run_once, arts[(pt.d, pt.w)], work_load) for pt in block],
                                functools.partial(flow.run_once, ref_art, work_load))
                    n_prog = len(block) + (1 if (ref_pt is not None and block is blocks[-1]) else 0)

                    def on_round(r: int, block: list[_Point] = block, n_prog: int = n_prog) -> None:
                        nonlocal done
                        done += n_prog
                        if progress:
                            names = ", ".join(grid_key(pt.d, pt.w) for pt in block) or ref_name
                            progress(f"{phase} round {r + 1}/{rounds} [{names}] vs {ref_name}", done, total)

                    res = measure_paired(fns, ref_fn, plan.measure, cpu_threads, on_round,
                                         rebuild if plan.measure.rebuild else None)
                finally:
                    for a in arts.values():
                        flow.close(a)
                table.add_reference_block(variant, phase, plan.prompt_len, plan.batch, threads, ref_name,
                                          res.reference)
                ref_samples += res.reference.samples_ms
                ref_util += res.reference.util
                for pt, st in zip(block, res.shapes):  # a block's rows are written together
                    _write_row(table, pt, st, ref_name, versions, result)
            if ref_pt is not None:
                st = LatencyStats.from_samples(ref_samples, 0, ref_util)
                _write_row(table, ref_pt, st, ref_name, versions, result)
    finally:
        if ref_art is not None:
            flow.close(ref_art)
    if plan.per_layer:
        result.composed = _compose(plan, table, variant)
    result.seconds = time.perf_counter() - t_start
    return result


def _contended(row: pd.Series, min_util: float) -> bool:
    """A row's contention diagnostic: median util below ``min_util`` (legacy rows: every sample
    set aside by the old filter)."""
    util = float(row.get("util", math.nan))
    if not math.isnan(util):
        return util < min_util
    return int(row.get("discarded", 0)) >= int(row.get("n", 1)) > 0


def _write_row(table: LatencyTable, pt: _Point, stats: LatencyStats, reference: str, versions: str,
               result: ProfileResult) -> None:
    ratio = stats.ratio if isinstance(stats, PairedStats) else None  # the reference itself: ratio 1
    row = {
        **pt.key,
        "p50_ms": stats.p50_ms,
        "p10_ms": stats.p10_ms,
        "p90_ms": stats.p90_ms,
        "n": stats.n,
        "discarded": 0,
        "samples_ms": list(stats.samples_ms),
        "created": now_utc(),
        "ratio": ratio.value if ratio else 1.0,
        "ratio_lo": ratio.lo if ratio else 1.0,
        "ratio_hi": ratio.hi if ratio else 1.0,
        "reference": reference,
        "util": stats.util_median,
        "versions": versions,
    }
    if pt.redo:
        table.replace(row)
    elif not table.append(row):
        return
    result.written += 1
    result.rows.append(row)
    result.contended += int(_contended(pd.Series(row), result.min_util))


def _check_measurable(spec: DeviceSpec, plan: ProfilePlan) -> None:
    if spec.roofline_only:
        raise AmoebaError(
            f"device {spec.name} is roofline-only (a spec sheet, not this machine); "
            f"profile it on the device itself, or use `amoeba predict` for its roofline"
        )
    if (spec.kind == "gpu") != (plan.config.device == "cuda"):
        raise AmoebaError(f"device {spec.name} is a {spec.kind} but the flow runs on {plan.config.device}")


def measure_config_for(flow: str, cfg: MeasureConfig | None = None) -> MeasureConfig:
    """``cfg`` (default: the protocol's defaults) with ``rebuild`` resolved to the flow's default
    (:attr:`profiler.flows.base.Flow.rebuild_between_rounds`) when it is None."""
    cfg = cfg or MeasureConfig()
    if cfg.rebuild is None:
        cfg = dataclasses.replace(cfg, rebuild=flow_class(flow).rebuild_between_rounds)
    return cfg


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
    options: Mapping[str, Any] | FlowOptions | None = None,
    redo_contended: bool = False,
    reference: tuple[int, float] | None = None,
    attn_widths: tuple[float, ...] = (),
) -> ProfilePlan:
    """Validate everything a profile needs before anything is written."""
    geometry = ModelGeometry.resolve(model)
    cfg = measure_config_for(flow, measure_cfg)  # an unknown flow -> error listing the known ones
    opts = parse_options(flow, options)  # an unknown key or a bad value -> error listing the valid ones
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
        config=FlowConfig(dtype=dtype, threads=threads, device=torch_device, options=opts),
        sparse=sparse,
        per_layer=per_layer,
        measure=cfg,
        redo_contended=redo_contended,
        reference_shape=reference,
        attn_widths=tuple(attn_widths),
    )
