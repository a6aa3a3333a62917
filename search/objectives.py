"""The two objectives of a shape: accuracy (expensive, device independent) and latency (a LUT look-up).

Accuracy is next-token top-1 accuracy on held-out text from the Stage 1 evaluator, with
perplexity kept alongside. Every score is stored once per (model fingerprint, shape key) in
the store under the run's name (:mod:`search.records`) and shared by every device, flow and search
method; a shape is never evaluated twice. Several search processes can share one run (a record is
inserted once, in a transaction). A record carries its 90% intervals (``top1_lo/hi``, ``ppl_lo/hi``,
bootstrap over evaluation windows, :mod:`amoeba_core.stats`), the per-window sums they came
from, and its cost in evaluated tokens.

Multi-fidelity (:class:`MultiFidelityAccuracy`): a shape is scored on ``rungs`` of growing
window counts (e.g. 4, 8, 32 of a fixed set of 32 windows). The windows are taken in a spread
order (bit-reversal of their position in the split), so every rung samples the whole text and
each rung's windows contain the previous rung's: promoting a shape costs only the windows it
has not seen. Every rung's score is a row of the table under its own context
(``...|<n>w``), so the full-budget rows are exactly what a single-fidelity search stores.

Latency is :class:`search.latency.LatencyObjective` (the profiler's tables, one
:class:`profiler.lookup.LatencyEstimate` per shape).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence


from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape

log = logging.getLogger(__name__)



from search.records import (  # noqa: E402,F401 (the record types live in search.records; re-exported)
    COLUMNS,
    AccuracyRecord,
    AccuracyTable,
    record_dict,
    record_from_dict,
)


def window_record(fingerprint: str, shape: SubnetShape, nll: Sequence[float], correct: Sequence[float],
                  count: Sequence[float], tokens: int, seconds: float | None = None, kind: str = "strategy",
                  doc: Sequence[int] | None = None) -> AccuracyRecord:
    """A record from per-window sums: point values and 90% bootstrap intervals, computed by the
    evaluator's own rule (:meth:`amoeba_core.evaluate.ShapeScore.from_units`: resample documents
    when the windows come from enough of them, else windows)."""
    from amoeba_core.evaluate import ShapeScore

    if not float(sum(count)) > 0:
        raise AmoebaError(f"no scored tokens for {shape.grid_key}")
    sc = ShapeScore.from_units(shape.key, "", list(nll), [int(x) for x in correct], [int(x) for x in count],
                               float(seconds or 0.0), None if doc is None else list(doc))
    return AccuracyRecord(fingerprint, shape.key, shape.depth, shape.width, sc.top1_acc, sc.ppl, sc.nll, sc.n_tokens,
                          seconds, kind, sc.top1_lo, sc.top1_hi, sc.ppl_lo, sc.ppl_hi, len(count), int(tokens),
                          tuple(float(x) for x in nll), tuple(float(x) for x in correct),
                          tuple(float(x) for x in count), None if doc is None else tuple(float(x) for x in doc),
                          sc.ci_unit)


class AccuracyObjective:
    """Cached accuracy of a shape. ``evaluate(shape)`` returns a float or a ShapeScore-like object."""

    def __init__(self, evaluate: Callable[[SubnetShape], Any], table: AccuracyTable, fingerprint: str) -> None:
        self.evaluate, self.table, self.fingerprint = evaluate, table, fingerprint
        self.n_evaluated = 0  # evaluations actually run by this object (cache misses)
        self.evaluator: Any = None
        self.windows: int | None = None  # windows and tokens one evaluation runs (when known)
        self.tokens: int | None = None

    def cached(self, shape: SubnetShape) -> AccuracyRecord | None:
        return self.table.get(self.fingerprint, shape.key)

    def __call__(self, shape: SubnetShape, kind: str = "strategy") -> AccuracyRecord:
        hit = self.cached(shape)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        score = self.evaluate(shape)
        seconds = time.perf_counter() - t0
        windows = _window_sums(score)
        if isinstance(score, (int, float)):
            rec = AccuracyRecord(self.fingerprint, shape.key, shape.depth, shape.width, float(score), seconds=seconds,
                                 kind=kind, windows=self.windows, tokens=self.tokens)
        elif windows is not None:
            rec = window_record(self.fingerprint, shape, *windows, tokens=self.tokens or 0,
                                seconds=float(getattr(score, "seconds", seconds) or seconds), kind=kind,
                                doc=getattr(score, "unit_doc", None))
        else:
            rec = AccuracyRecord(self.fingerprint, shape.key, shape.depth, shape.width, float(score.top1_acc),
                                 _f(getattr(score, "ppl", None)), _f(getattr(score, "nll", None)),
                                 getattr(score, "n_tokens", None), float(getattr(score, "seconds", seconds) or seconds),
                                 kind, _f(getattr(score, "top1_lo", None)), _f(getattr(score, "top1_hi", None)),
                                 _f(getattr(score, "ppl_lo", None)), _f(getattr(score, "ppl_hi", None)),
                                 self.windows, self.tokens)
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
        obj.windows, obj.tokens = ev.n_windows, ev.n_windows * seq_len
        return obj


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _window_sums(score: Any) -> tuple[list[float], list[float], list[float]] | None:
    """Per-window (NLL sums, right tokens, token counts) of an evaluator score, when it has them."""
    vals = [getattr(score, n, None) for n in ("unit_nll", "unit_correct", "unit_tokens")]
    if all(v is not None for v in vals):
        return tuple([float(x) for x in v] for v in vals)  # type: ignore[return-value]
    return None


def spread_order(n: int) -> list[int]:
    """Window indices 0..n-1 in bit-reversal order: every prefix is spread over the whole range."""
    if n < 1:
        return []
    bits = max(1, (n - 1).bit_length())
    out, seen = [], set()
    for i in range(1 << bits):
        j = int(format(i, f"0{bits}b")[::-1], 2)
        if j < n and j not in seen:
            seen.add(j)
            out.append(j)
    return out


class MultiFidelityAccuracy:
    """Accuracy of a shape at several fidelities (rungs of window counts), each cached in the table.

    ``score(shape, r)`` returns the record at rung ``r`` (0 = cheapest, ``-1`` = full budget); a
    missing rung is computed from the previous rung plus only the windows it adds. Calling the
    object gives the full-budget record, so it stands in for :class:`AccuracyObjective` in any
    single-fidelity search. ``cost(r_from, r_to)`` is the tokens a promotion runs through the model.
    """

    def __init__(self, run_windows: Callable[[SubnetShape, Sequence[int]], tuple[list[float], list[float], list[float]]],
                 table: AccuracyTable, base_context: str, n_windows: int, seq_len: int,
                 rungs: Sequence[int] = (4, 32), window_doc: Sequence[int] | None = None) -> None:
        rs = tuple(sorted({int(r) for r in rungs}))
        if not rs or rs[0] < 1 or rs[-1] != n_windows:
            raise AmoebaError(f"fidelity rungs must be window counts ending at the full budget {n_windows}, got "
                              f"{list(rungs)}")
        self.run_windows, self.table, self.base = run_windows, table, base_context
        self.rungs, self.seq_len, self.order = rs, int(seq_len), spread_order(n_windows)
        self.window_doc = None if window_doc is None else [int(d) for d in window_doc]
        self.fingerprints = [f"{base_context}|{n}w" for n in rs]
        self.fingerprint = self.fingerprints[-1]
        self.n_evaluated = 0  # rung evaluations actually run (cache misses)
        self.tokens_run = 0  # tokens actually run through the model by this object

    def tokens(self, rung: int) -> int:
        """Tokens to score a shape from nothing up to ``rung``."""
        return self.rungs[rung] * self.seq_len

    def cost(self, r_from: int | None, r_to: int) -> int:
        """Tokens to promote a shape scored at ``r_from`` (None: not scored) to ``r_to``."""
        r_to %= len(self.rungs)
        return self.tokens(r_to) - (0 if r_from is None else self.tokens(r_from % len(self.rungs)))

    def cached(self, shape: SubnetShape, rung: int = -1) -> AccuracyRecord | None:
        return self.table.get(self.fingerprints[rung], shape.key)

    def score(self, shape: SubnetShape, rung: int = -1, kind: str = "strategy") -> AccuracyRecord:
        rung %= len(self.rungs)
        hit = self.cached(shape, rung)
        if hit is not None:
            return hit
        n = self.rungs[rung]
        for up in range(len(self.rungs) - 1, rung, -1):  # a higher rung's first n windows are this rung
            big = self.cached(shape, up)
            if big is not None and big.window_nll is not None and big.window_correct and big.window_count:
                doc = None if big.window_doc is None else [int(d) for d in big.window_doc[:n]]
                rec = window_record(self.fingerprints[rung], shape, big.window_nll[:n], big.window_correct[:n],
                                    big.window_count[:n], self.tokens(rung), None, kind, doc)
                self.table.put(rec)
                return rec
        prev = self.score(shape, rung - 1, kind) if rung > 0 else None
        lo = self.rungs[rung - 1] if rung > 0 else 0
        idx = self.order[lo:self.rungs[rung]]
        t0 = time.perf_counter()
        nll, correct, count = self.run_windows(shape, idx)
        seconds = time.perf_counter() - t0
        if prev is not None and prev.window_nll is not None:
            nll = list(prev.window_nll) + list(nll)
            correct = list(prev.window_correct or ()) + list(correct)
            count = list(prev.window_count or ()) + list(count)
            seconds += prev.seconds or 0.0
        doc = None if self.window_doc is None else [self.window_doc[i] for i in self.order[: self.rungs[rung]]]
        rec = window_record(self.fingerprints[rung], shape, nll, correct, count, self.tokens(rung), seconds, kind, doc)
        self.n_evaluated += 1
        self.tokens_run += len(idx) * self.seq_len
        self.table.put(rec)
        log.info("accuracy %s @%d windows: top1 %.4f [%.4f, %.4f] (%.1f s)", shape.grid_key, self.rungs[rung],
                 rec.top1_acc, rec.top1_lo, rec.top1_hi, seconds)
        return rec

    def __call__(self, shape: SubnetShape, kind: str = "strategy") -> AccuracyRecord:
        return self.score(shape, -1, kind)

    @classmethod
    def from_stage1(cls, strategy_path: Path | str, table: AccuracyTable, model_source: str | None = None,
                    split: str = "val", seq_len: int = 256, max_windows: int = 32, rungs: Sequence[int] | None = None,
                    adapters: Path | str | None = None, memo_mb: int = 1024) -> MultiFidelityAccuracy:
        """The Stage 1 model and split; ``max_windows`` windows spread over the whole split (full budget).

        Cache context: model (+adapters) | width rankings | split | seq_len | hash of the window tokens |
        rung windows, so a score is reused only when it would come out the same.
        """
        from amoeba_core.data import split_docs, spread_windows
        from amoeba_core.evaluate import Evaluator, windows_id
        from amoeba_core.model import load_model
        from amoeba_core.strategy import Strategy

        strategy = Strategy.load(strategy_path)
        loaded = load_model(model_source or strategy.model_source)
        if adapters is not None:
            from amoeba_core.finetune import apply_adapters

            loaded = apply_adapters(loaded, strategy, adapters)
        ids, window_doc = spread_windows(loaded.tokenizer, split_docs(split), seq_len, int(max_windows))
        n = int(ids.shape[0])
        if n < int(max_windows):
            log.warning("the %s split has %d windows of %d tokens; full budget is %d windows", split, n, seq_len, n)
        rs = tuple(rungs) if rungs else (max(1, n // 8), n)
        rs = tuple(sorted({min(int(r), n) for r in rs} | {n}))
        segments: dict[tuple[int, ...], Any] = {}

        def run_windows(shape: SubnetShape, idx: Sequence[int]) -> tuple[list[float], list[float], list[float]]:
            key = tuple(idx)
            if key not in segments:  # one evaluator per rung segment, each with its own prefix memo
                segments[key] = Evaluator(loaded, strategy, split=split, seq_len=seq_len, windows=ids[list(key)],
                                          window_doc=[window_doc[i] for i in key],
                                          memo_mb=max(64, memo_mb // len(rs)))
            sc = segments[key].score(shape)
            return list(sc.unit_nll), [float(x) for x in sc.unit_correct], [float(x) for x in sc.unit_tokens]

        ctx = f"{loaded.score_id}|{strategy.width_id}|{split}|{seq_len}|{windows_id(ids)}"
        obj = cls(run_windows, table, ctx, n, seq_len, rs, window_doc)
        obj.loaded, obj.windows_tensor = loaded, ids  # type: ignore[attr-defined]
        return obj
