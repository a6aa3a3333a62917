"""The two objectives of a shape: accuracy (expensive, device independent) and latency (a LUT look-up).

Accuracy is next-token top-1 accuracy on held-out text from the Stage 1 evaluator, with
perplexity kept alongside. Every score is stored once per (model fingerprint, shape key) in
``runs/<name>/accuracy.parquet`` and shared by every device, flow and search method; a shape is
never evaluated twice. Writes are atomic and serialised by a lock file, so several search
processes can share one table.

Latency comes from the profiler (a measured row when there is one, else its predictor) for
``decode`` (one token), ``prefill`` (the prompt) or ``e2e``: prefill of ``prompt_len`` tokens plus
``gen_len`` decode steps. An e2e value is labelled ``measured`` only when both parts are.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from amoeba_core.errors import AmoebaError
from amoeba_core.filelock import file_lock, read_snapshot
from amoeba_core.shape import SubnetShape

log = logging.getLogger(__name__)

PHASES = ("decode", "prefill", "e2e")
_SOURCE_RANK = {"measured": 0, "per-layer": 1, "predicted": 2, "roofline": 3}


@dataclass(frozen=True)
class AccuracyRecord:
    fingerprint: str
    key: str
    depth: int
    width: float
    top1_acc: float
    ppl: float | None = None
    nll: float | None = None
    n_tokens: int | None = None
    seconds: float | None = None
    kind: str = "strategy"  # or "baseline" (uniform shrink outside the strategy)


COLUMNS = list(AccuracyRecord.__dataclass_fields__)


class AccuracyTable:
    """Parquet table of accuracy records keyed by (fingerprint, key)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._rows: dict[tuple[str, str], AccuracyRecord] = {}
        self._mtime: int = -1
        self.reload()

    def reload(self) -> None:
        if not self.path.exists():
            return
        if self.path.stat().st_mtime_ns == self._mtime:
            return
        data, mtime = read_snapshot(self.path)  # one open: a concurrent replace cannot tear the read
        df = pd.read_parquet(io.BytesIO(data))
        self._rows = {(r.fingerprint, r.key): _record(r._asdict()) for r in df.itertuples(index=False)}
        self._mtime = mtime

    def get(self, fingerprint: str, key: str) -> AccuracyRecord | None:
        hit = self._rows.get((fingerprint, key))
        if hit is None:
            self.reload()
            hit = self._rows.get((fingerprint, key))
        return hit

    def records(self, fingerprint: str | None = None) -> list[AccuracyRecord]:
        self.reload()
        return [r for (fp, _), r in self._rows.items() if fingerprint is None or fp == fingerprint]

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.lock_path)

    def put(self, rec: AccuracyRecord) -> None:
        with self._locked():
            self._mtime = -1
            self.reload()
            if (rec.fingerprint, rec.key) in self._rows:
                return
            self._rows[(rec.fingerprint, rec.key)] = rec
            df = pd.DataFrame([asdict(r) for r in self._rows.values()], columns=COLUMNS)
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            df.to_parquet(tmp, index=False)
            os.replace(tmp, self.path)
            self._mtime = self.path.stat().st_mtime_ns


def _record(d: dict[str, Any]) -> AccuracyRecord:
    def opt(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and v != v) else v

    return AccuracyRecord(str(d["fingerprint"]), str(d["key"]), int(d["depth"]), float(d["width"]),
                          float(d["top1_acc"]), opt(d.get("ppl")), opt(d.get("nll")),
                          None if opt(d.get("n_tokens")) is None else int(d["n_tokens"]), opt(d.get("seconds")),
                          str(d.get("kind") or "strategy"))


class AccuracyObjective:
    """Cached accuracy of a shape. ``evaluate(shape)`` returns a float or a ShapeScore-like object."""

    def __init__(self, evaluate: Callable[[SubnetShape], Any], table: AccuracyTable, fingerprint: str) -> None:
        self.evaluate, self.table, self.fingerprint = evaluate, table, fingerprint
        self.n_evaluated = 0  # evaluations actually run by this object (cache misses)
        self.evaluator: Any = None

    def cached(self, shape: SubnetShape) -> AccuracyRecord | None:
        return self.table.get(self.fingerprint, shape.key)

    def __call__(self, shape: SubnetShape, kind: str = "strategy") -> AccuracyRecord:
        hit = self.cached(shape)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        score = self.evaluate(shape)
        seconds = time.perf_counter() - t0
        if isinstance(score, (int, float)):
            rec = AccuracyRecord(self.fingerprint, shape.key, shape.depth, shape.width, float(score), seconds=seconds,
                                 kind=kind)
        else:
            rec = AccuracyRecord(self.fingerprint, shape.key, shape.depth, shape.width, float(score.top1_acc),
                                 _f(getattr(score, "ppl", None)), _f(getattr(score, "nll", None)),
                                 getattr(score, "n_tokens", None), float(getattr(score, "seconds", seconds) or seconds),
                                 kind)
        self.n_evaluated += 1
        self.table.put(rec)
        log.info("accuracy %s: top1 %.4f (%.1f s)", shape.grid_key, rec.top1_acc, seconds)
        return rec

    @classmethod
    def from_stage1(cls, strategy_path: Path | str, table: AccuracyTable, model_source: str | None = None,
                    split: str = "val", seq_len: int = 256, max_windows: int | None = 8,
                    adapters: Path | str | None = None) -> AccuracyObjective:
        """The Stage 1 evaluator for a strategy (model from ``model_source``, default the strategy's source).

        The cache context (``fingerprint``) is model fingerprint | width rankings | split | seq_len |
        windows, so a score is reused only when it would come out the same.
        """
        from amoeba_core.evaluate import Evaluator
        from amoeba_core.model import load_model
        from amoeba_core.strategy import Strategy

        strategy = Strategy.load(strategy_path)
        loaded = load_model(model_source or strategy.model_source)
        if adapters is not None:
            from amoeba_core.finetune import apply_adapters

            loaded = apply_adapters(loaded, strategy, adapters)
        ev = Evaluator(loaded, strategy, split=split, seq_len=seq_len, max_windows=max_windows)
        ctx = f"{loaded.score_id}|{strategy.width_id}|{split}|{seq_len}|{ev.n_windows}"
        obj = cls(ev.score, table, ctx)
        obj.evaluator = ev
        return obj


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class ShapeLatency:
    ms: float
    source: str
    measured_ms: float | None = None
    predicted_ms: float | None = None


class LatencyObjective:
    """Latency of a shape on one device/flow from the profiler's tables (cached models)."""

    def __init__(self, device: str, flow: str, model: str, phase: str = "decode", prompt_len: int | None = None,
                 gen_len: int = 128, root: Path | None = None) -> None:
        from profiler.lookup import LatencyModel

        if phase not in PHASES:
            raise AmoebaError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        if gen_len < 1:
            raise AmoebaError(f"gen_len must be >= 1, got {gen_len}")
        self.device, self.flow, self.model, self.phase, self.gen_len = device, flow, model, phase, int(gen_len)
        self.parts: list[tuple[Any, int]] = []  # (LatencyModel, multiplier)
        if phase in ("decode", "prefill"):
            self.parts.append((LatencyModel.open(device, flow, model, phase, prompt_len, root=root), 1))
        else:
            pre = LatencyModel.open(device, flow, model, "prefill", prompt_len, root=root)
            try:
                dec = LatencyModel.open(device, flow, model, "decode", pre.prompt_len, pre.variant, root=root)
            except AmoebaError:
                dec = LatencyModel.open(device, flow, model, "decode", None, pre.variant, root=root)
                log.info("no decode rows at context %d; using decode at context %d", pre.prompt_len, dec.prompt_len)
            self.parts += [(pre, 1), (dec, self.gen_len)]
        self.prompt_len = self.parts[0][0].prompt_len
        self._cache: dict[tuple[int, float], ShapeLatency] = {}

    def __call__(self, shape: SubnetShape) -> ShapeLatency:
        return self.at(shape.depth, shape.width)

    def at(self, depth: int, width: float) -> ShapeLatency:
        key = (int(depth), float(width))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        ests = [(m.estimate(depth, width), k) for m, k in self.parts]
        ms = sum(e.ms * k for e, k in ests)
        source = max((e.source for e, _ in ests), key=lambda s: _SOURCE_RANK.get(s, 9))
        measured = sum(e.measured_ms * k for e, k in ests) if all(e.measured_ms is not None for e, _ in ests) else None
        predicted = sum(e.predicted_ms * k for e, k in ests) if all(e.predicted_ms is not None for e, _ in ests) \
            else None
        if not ms > 0:
            raise AmoebaError(f"{self.device}/{self.flow}/{self.model} gives a non-positive {self.phase} latency "
                              f"({ms:.4g} ms, {source}) for d{depth}-w{width:.3f}: the shape is outside what the "
                              "table's predictor can extrapolate; profile widths/depths that cover it")
        out = ShapeLatency(float(ms), source, measured, predicted)
        self._cache[key] = out
        return out
