"""Best shape for (device, flow, budget, phase): exact over the shapes whose accuracy is stored.

A run folder (``runs/<name>/``) holds ``search.yaml`` (the model and the search space, written by
``amoeba search``) and ``accuracy.parquet`` (every evaluated shape). For one (device, flow, phase)
the index looks up each stored shape's latency once, sorts by latency and keeps a running
arg-max of accuracy, so a query is one binary search (microseconds). The answer is the most
accurate stored shape whose latency fits the budget (ties: the faster one). An infeasible
budget gets an answer naming the fastest stored shape and its latency; an unknown device or
flow raises :class:`AmoebaError` listing the known ones.
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
from search.objectives import PHASES, AccuracyRecord, AccuracyTable, LatencyObjective, ShapeLatency
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
    def __init__(self, points: list[Point]) -> None:
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

    def __init__(self, run_dir: Path | str, root: Path | None = None, prompt_len: int | None = None,
                 gen_len: int = 128) -> None:
        self.run_dir, self.root = Path(run_dir), root
        meta = read_meta(self.run_dir)
        self.space = SearchSpace.from_dict(meta["space"])
        self.model = self.space.model
        self.prompt_len, self.gen_len = prompt_len, gen_len
        table = AccuracyTable(self.run_dir / "accuracy.parquet")
        self.records: list[AccuracyRecord] = [r for r in table.records(self.space.fingerprint) if r.kind == "strategy"]
        self.baselines: list[AccuracyRecord] = [r for r in table.records() if r.kind == "baseline"]
        if not self.records:
            raise AmoebaError(f"no evaluated shapes in {self.run_dir / 'accuracy.parquet'}")
        self._lock = threading.Lock()
        self._indexes: dict[tuple[str, str, str], _Index] = {}
        self._tables: dict[str, list[str]] | None = None

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
            raise AmoebaError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        known = self.tables()
        if device not in known:
            raise AmoebaError(f"unknown device {device!r} for model {self.model}; known: {', '.join(known) or '(none)'}")
        if flow not in known[device]:
            raise AmoebaError(f"unknown flow {flow!r} on {device} for model {self.model}; known: "
                              f"{', '.join(known[device])}")

    def latency_objective(self, device: str, flow: str, phase: str) -> LatencyObjective:
        return LatencyObjective(device, flow, self.model, phase, self.prompt_len, self.gen_len, self.root)

    def index(self, device: str, flow: str, phase: str = "decode") -> _Index:
        key = (device, flow, phase)
        hit = self._indexes.get(key)
        if hit is not None:
            return hit
        with self._lock:
            if key not in self._indexes:
                self._check(device, flow, phase)
                lat = self.latency_objective(device, flow, phase)
                self._indexes[key] = _Index([_point(r, lat.at(r.depth, r.width)) for r in self.records])
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
    def front(self, device: str, flow: str, phase: str = "decode") -> list[Point]:
        return self.index(device, flow, phase).front()

    def points(self, device: str, flow: str, phase: str = "decode") -> list[Point]:
        return list(self.index(device, flow, phase).points)

    def best(self, device: str, flow: str, budget_ms: float, phase: str = "decode") -> Answer:
        budget = float(budget_ms)
        if not np.isfinite(budget) or budget <= 0:
            raise AmoebaError(f"budget must be a positive number of milliseconds, got {budget_ms!r}")
        ix = self.index(device, flow, phase)
        pos = bisect.bisect_right(ix.lat, budget) - 1
        fastest = ix.points[0]
        if pos < 0:
            msg = (f"no stored shape fits {budget:g} ms ({phase}) on {device}/{flow}; the fastest is "
                   f"{_grid(fastest)} at {fastest.latency_ms:.3f} ms")
            return Answer(False, device, flow, phase, budget, None, fastest, msg, None)
        p = ix.points[ix.best[pos]]
        msg = f"{_grid(p)}: top-1 {p.accuracy:.4f} at {p.latency_ms:.3f} ms ({p.latency_source}) <= {budget:g} ms"
        return Answer(True, device, flow, phase, budget, p, fastest, msg, self.export_command(p))

    def export_command(self, p: Point) -> str:
        strategy = self.space.strategy_path or str(self.run_dir / "strategy.yaml")
        return f"amoeba export --strategy {strategy} --shape {_grid(p)} --out exports/{_grid(p)}"


def _grid(p: Point) -> str:
    return f"d{p.depth}-w{p.width:.3f}"


def _point(r: AccuracyRecord, lat: ShapeLatency) -> Point:
    return Point(r.key, r.depth, r.width, r.top1_acc, r.ppl, lat.ms, lat.source, lat.measured_ms, lat.predicted_ms)
