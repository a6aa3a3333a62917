"""Best shape for (device, flow, budget, phase): exact over the shapes whose accuracy is stored.

A run folder (``runs/<name>/``) holds ``search.yaml`` (the model and the search space, written by
``amoeba search``) and the run's accuracy records (every evaluated shape, :mod:`search.records`). For one (device, flow, phase)
the index looks up each stored shape's latency once, sorts by latency and keeps a running
arg-max of accuracy, so a query is one binary search (microseconds). The answer is the most
accurate stored shape whose latency fits the budget (ties: the faster one). An infeasible
budget gets an answer naming the fastest stored shape and its latency; an unknown device or
flow raises :class:`AmoebaError` listing the known ones (user input in messages is clipped).

Variants (a table's weight types or builds: float32, f16, q4_0, tuned-32, ...): every query takes
``variant``; without one the table's first variant is taken, and the answer names it and lists
the others. Every point carries where its latency came from (``latency_source``: measured,
per-layer, predicted, transferred, roofline), its interval (``lo_ms``/``hi_ms``, when the
profiler gives one) and whether the profiler extrapolated outside the measured shapes.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import WidthAxes, parse_shape
from search.objectives import AccuracyRecord, AccuracyTable
from search.latency import LatencyObjective, PHASES
from profiler.lookup import LatencyEstimate
from search.pareto import pareto_indices
from search.space import SearchSpace

log = logging.getLogger(__name__)

META = "search.yaml"


@dataclass(frozen=True)
class Point:
    key: str
    depth: int
    width: float
    accuracy: float
    ppl: float | None
    latency_ms: float
    latency_source: str
    measured_ms: float | None
    predicted_ms: float | None
    lo_ms: float | None = None  # latency interval (profiler's; None when it gives none)
    hi_ms: float | None = None
    extrapolated: bool | None = None  # the latency comes from outside the measured widths/depths
    accuracy_lo: float | None = None  # 90% interval of the accuracy, when stored
    accuracy_hi: float | None = None


@dataclass(frozen=True)
class Answer:
    feasible: bool
    device: str
    flow: str
    phase: str
    budget_ms: float
    shape: Point | None
    fastest: Point
    message: str
    export_command: str | None
    variant: str | None = None  # the variant the latencies are of
    variants: tuple[str, ...] = ()  # every variant of the table
    variant_note: str | None = None  # set when a variant was taken for the caller (several, none given)
    weights: str = "stage1"  # "stage2" when the run's accuracies are of the fine-tuned model (search --adapters)
    adapters: str | None = None  # the Stage 2 adapters those accuracies were scored with


def write_meta(run_dir: Path | str, space: SearchSpace, extra: dict[str, Any] | None = None) -> Path:
    path = Path(run_dir) / META
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"space": space.to_dict(), **(extra or {})}
    tmp = path.with_name(f".{META}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return path


def read_meta(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / META
    if not path.is_file():
        raise AmoebaError(f"no search results in {run_dir} ({META} missing): run `amoeba search --run {run_dir} ...`")
    return yaml.safe_load(path.read_text())


class _Index:
    def __init__(self, points: list[Point], variant: str | None = None, variants: tuple[str, ...] = ()) -> None:
        self.variant, self.variants = variant, variants
        self.points = sorted(points, key=lambda p: (p.latency_ms, -p.accuracy))
        self.lat = [p.latency_ms for p in self.points]
        best, self.best = -1, []
        for k, p in enumerate(self.points):
            if best < 0 or p.accuracy > self.points[best].accuracy:
                best = k
            self.best.append(best)

    def front(self) -> list[Point]:
        idx = pareto_indices([p.latency_ms for p in self.points], [p.accuracy for p in self.points])
        return [self.points[i] for i in idx]


class QueryIndex:
    """Answers queries for one run; thread-safe; indexes are built on first use and cached."""

    def __init__(self, run_dir: Path | str, root: Path | str | None = None, prompt_len: int | None = None,
                 gen_len: int = 128, *, meta: dict[str, Any] | None = None,
                 records: list[AccuracyRecord] | None = None) -> None:
        """A run folder's index; ``meta``/``records`` given (a run in the store: :meth:`from_store`) are
        used instead of the folder's files. ``root``: where latencies are read (a folder, a store URL)."""
        self.run_dir, self.root = Path(run_dir), root
        meta = read_meta(self.run_dir) if meta is None else meta
        self.space = SearchSpace.from_dict(meta["space"])
        self.model = self.space.model
        self.adapters: str | None = meta.get("adapters") or None
        self.weights = "stage2" if self.adapters else "stage1"  # which model the stored accuracies are of
        self.prompt_len, self.gen_len = prompt_len, gen_len
        table = AccuracyTable(self.run_dir, url=meta.get("accuracy_store")) if records is None else None
        every = table.records() if table is not None else records or []
        self.records: list[AccuracyRecord] = [r for r in every if r.fingerprint == self.space.fingerprint
                                              and r.kind == "strategy"]
        self.baselines: list[AccuracyRecord] = [r for r in every if r.kind == "baseline"]
        if not self.records:
            where = table if table is not None else f"run {self.run_dir.name} of the store"
            raise AmoebaError(f"no evaluated shapes in {where}")
        self._lock = threading.Lock()
        self._indexes: dict[tuple[str, str, str, str | None], _Index] = {}
        self._tables: dict[str, list[str]] | None = None
        self._full: dict[tuple[str, str, str, str | None], LatencyEstimate] = {}  # full model's latency per table

    @classmethod
    def from_store(cls, store: Any, run: str, prompt_len: int | None = None, gen_len: int = 128,
                   root: Path | None = None) -> QueryIndex:
        """The index of run ``run`` as pushed into ``store`` (:class:`profiler.store.Store`), latencies from it
        too. ``root``: the local profiles folder; when ``store`` is its own, device specs are read there."""
        from profiler.store import store_url
        from search.objectives import record_from_dict

        meta = store.run_meta(run)
        if meta is None:
            raise AmoebaError(f"no search results for run {clip(run)} in the store: run `amoeba search --run "
                              f"runs/{run} ...` or `amoeba push --run ...`")
        where = root if store.url == store_url(root)[0] else store.url
        return cls(Path(run), where, prompt_len, gen_len, meta=meta,
                   records=[record_from_dict(r) for r in store.run_records(run)])

    # -- what is known -------------------------------------------------------------------
    def tables(self) -> dict[str, list[str]]:
        """device -> flows with a latency table for this run's model (read once per index)."""
        from profiler.lookup import list_tables

        if self._tables is None:
            out: dict[str, list[str]] = {}
            for t in list_tables(self.root):
                if t.model == self.model:
                    out.setdefault(t.device, []).append(t.flow)
            self._tables = {d: sorted(f) for d, f in sorted(out.items())}
        return self._tables

    def _check(self, device: str, flow: str, phase: str) -> None:
        if phase not in PHASES:
            raise AmoebaError(f"phase must be one of {', '.join(PHASES)}, got {clip(phase, 20)}")
        known = self.tables()
        if device not in known:
            raise AmoebaError(f"unknown device {clip(device)} for model {self.model}; known: "
                              f"{', '.join(known) or '(none)'}")
        if flow not in known[device]:
            raise AmoebaError(f"unknown flow {clip(flow)} on {device} for model {self.model}; known: "
                              f"{', '.join(known[device])}")

    def latency_objective(self, device: str, flow: str, phase: str, variant: str | None = None) -> LatencyObjective:
        return LatencyObjective(device, flow, self.model, phase, self.prompt_len, self.gen_len, self.root,
                                variant=variant)

    def variants(self, device: str, flow: str) -> tuple[str, ...]:
        """The variants of (device, flow)'s table, the default (first) one first."""
        return self.index(device, flow, "decode" if self._has_phase(device, flow, "decode") else "prefill").variants

    def _has_phase(self, device: str, flow: str, phase: str) -> bool:
        try:
            self.index(device, flow, phase)
            return True
        except AmoebaError:
            return False

    def index(self, device: str, flow: str, phase: str = "decode", variant: str | None = None) -> _Index:
        key = (device, flow, phase, variant)
        hit = self._indexes.get(key)
        if hit is not None:
            return hit
        if variant is not None:
            base = self.index(device, flow, phase)
            if variant not in base.variants:
                raise AmoebaError(f"unknown variant {clip(variant)} on {device}/{flow} for model {self.model}; "
                                  f"known: {', '.join(base.variants) or '(none)'}")
        with self._lock:
            if key not in self._indexes:
                self._check(device, flow, phase)
                lat = self.latency_objective(device, flow, phase, variant)
                m = lat.parts[0][0]
                ix = _Index([_point(r, lat.at(r.depth, _record_width(r))) for r in self.records], m.variant, _variants(m))
                self._indexes[key] = ix
                self._indexes.setdefault((device, flow, phase, m.variant), ix)
            return self._indexes[key]

    def warm(self) -> None:
        for device, flows in self.tables().items():
            for flow in flows:
                for phase in ("decode", "prefill"):
                    try:
                        self.index(device, flow, phase)
                    except AmoebaError as e:
                        log.info("no %s index for %s/%s: %s", phase, device, flow, e)

    # -- queries ------------------------------------------------------------------------
    def full_shape_key(self) -> str:
        """The full-size shape of the run's space (deepest, full width): what a budget such as 80% is a share of."""
        return f"d{max(self.space.depths)}-w1"

    def full_latency(self, device: str, flow: str, phase: str = "decode", variant: str | None = None) -> LatencyEstimate:
        """Latency of :meth:`full_shape_key` on a table (checked as :meth:`index` checks it)."""
        ix = self.index(device, flow, phase, variant)
        key = (device, flow, phase, ix.variant)
        hit = self._full.get(key)
        if hit is None:
            hit = self._full[key] = self.latency_objective(device, flow, phase, ix.variant).at(max(self.space.depths),
                                                                                              1.0)
        return hit

    def share_budget(self, share: float, device: str, flow: str, phase: str = "decode",
                     variant: str | None = None) -> tuple[float, str]:
        """``share`` of the full model's latency in ms, and a line saying how it was resolved."""
        full = self.full_latency(device, flow, phase, variant)
        ms = float(share) * full.ms
        return ms, (f"{share * 100:g}% of {self.full_shape_key()} ({full.ms:.3f} ms, {describe_latency(full)}) "
                    f"= {ms:.3f} ms")

    def front(self, device: str, flow: str, phase: str = "decode", variant: str | None = None) -> list[Point]:
        return self.index(device, flow, phase, variant).front()

    def points(self, device: str, flow: str, phase: str = "decode", variant: str | None = None) -> list[Point]:
        return list(self.index(device, flow, phase, variant).points)

    def best(self, device: str, flow: str, budget_ms: float, phase: str = "decode",
             variant: str | None = None) -> Answer:
        budget = float(budget_ms)
        if not np.isfinite(budget) or budget <= 0:
            raise AmoebaError(f"budget must be a positive number of milliseconds, got {clip(budget_ms, 30)}")
        ix = self.index(device, flow, phase, variant)
        note = variant_note(ix.variant, ix.variants) if variant is None else None
        var = dict(variant=ix.variant, variants=ix.variants, variant_note=note, weights=self.weights,
                   adapters=self.adapters)
        pos = bisect.bisect_right(ix.lat, budget) - 1
        fastest = ix.points[0]
        where = f"{device}/{flow}" + (f" [{ix.variant}]" if ix.variant else "")
        where += f", {self.describe_weights()}"
        if pos < 0:
            msg = (f"no stored shape fits {budget:g} ms ({phase}) on {where}; the fastest is "
                   f"{_grid(fastest)} at {fastest.latency_ms:.3f} ms ({describe_latency(fastest)})")
            return Answer(False, device, flow, phase, budget, None, fastest, msg, None, **var)
        p = ix.points[ix.best[pos]]
        msg = (f"{_grid(p)}: top-1 {p.accuracy:.4f} at {p.latency_ms:.3f} ms ({describe_latency(p)}) <= {budget:g} ms"
               f" on {where}")
        return Answer(True, device, flow, phase, budget, p, fastest, msg, self.export_command(p), **var)

    def describe_weights(self) -> str:
        """``Stage 1 model`` or ``Stage 2 fine-tuned model (adapters <dir>)``: what the accuracies are of."""
        return f"Stage 2 fine-tuned model (adapters {self.adapters})" if self.adapters else "Stage 1 model"

    def export_command(self, p: Point) -> str:
        strategy = self.space.strategy_path or str(self.run_dir / "strategy.yaml")
        extra = f" --adapters {self.adapters}" if self.adapters else ""
        return f"amoeba export --strategy {strategy} --shape {_grid(p)}{extra} --out exports/{_grid(p)}"


def parse_share(text: str) -> float | None:
    """``80%`` -> 0.8 (a budget as a share of the full model's latency on the table asked); None for a time."""
    t = str(text).strip().replace(" ", "")
    if not t.endswith("%"):
        return None
    try:
        v = float(t[:-1]) / 100
    except ValueError:
        raise AmoebaError(f"budget must be a time such as 40ms or 0.04s, or a share of the full model such as 80%, "
                          f"got {text!r}") from None
    if not 0 < v < float("inf"):
        raise AmoebaError(f"budget must be a positive share of the full model, got {text!r}")
    return v


def clip(text: object, n: int = 64) -> str:
    """``repr`` of user input, cut to ``n`` characters: an error never echoes a whole request."""
    s = str(text)
    return repr(s) if len(s) <= n else f"{s[:n]!r}... ({len(s)} chars)"


def variant_note(taken: str | None, variants: tuple[str, ...]) -> str | None:
    """Why this variant: only when the table has several and the caller named none."""
    if taken is None or len(variants) < 2:
        return None
    others = ", ".join(v for v in variants if v != taken)
    return f"variant {taken} taken (the table's first of {len(variants)}); others: {others} (choose with variant=)"


def is_pairing_reference(source: str, ms: float | None, lo: float | None, hi: float | None) -> bool:
    """A paired table's reference row: measured, its ratio to itself is 1 with no interval, so its interval
    is its ms twice (its ms is the level the other rows' ratios are multiplied by; the host's drift is in the
    table's header)."""
    return source == "measured" and lo is not None and lo == hi == ms


def describe_latency(p: Point) -> str:
    """``measured``, ``predicted 3.1-3.6 ms, extrapolated`` ...: where a latency came from."""
    parts = [getattr(p, "latency_source", None) or getattr(p, "source", "")]  # a Point or a LatencyEstimate
    if is_pairing_reference(parts[0], getattr(p, "latency_ms", None) or getattr(p, "ms", None), p.lo_ms, p.hi_ms):
        parts.append("the pairing's reference: ratio 1 by definition")
    elif p.lo_ms is not None and p.hi_ms is not None:
        parts.append(f"{p.lo_ms:.3f}-{p.hi_ms:.3f} ms")
    if p.extrapolated:
        parts.append("extrapolated")
    return ", ".join(parts)


def _variants(m: object) -> tuple[str, ...]:
    """The variants of a LatencyModel's table, the one it uses first."""
    table = getattr(m, "table", None)
    taken = getattr(m, "variant", None)
    if table is None:
        return (taken,) if taken else ()
    known = [v for v in table.header.get("variants", []) if v in table.variants] or list(table.variants)
    known += [v for v in table.variants if v not in known]
    return tuple(known)


def _grid(p: Point) -> str:
    return parse_shape(p.key).grid_key  # d24-w0.750 or d24-a0.667-m0.750


def _record_width(r: AccuracyRecord) -> float | WidthAxes:
    """The width key of a record (its ``width`` is the MLP width of a separate shape: the key says which)."""
    return parse_shape(r.key).axes if parse_shape(r.key).attn_width is not None else r.width


def _point(r: AccuracyRecord, lat: LatencyEstimate) -> Point:
    return Point(r.key, r.depth, r.width, r.top1_acc, r.ppl, lat.ms, lat.source, lat.measured_ms, lat.predicted_ms,
                 getattr(lat, "lo_ms", None), getattr(lat, "hi_ms", None), getattr(lat, "extrapolated", None),
                 getattr(r, "top1_lo", None), getattr(r, "top1_hi", None))
