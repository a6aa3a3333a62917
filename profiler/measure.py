"""The timing protocol: paired sampling against a reference shape, statistics, provenance.

Why paired: on a shared host a shape's level drifts by tens of percent within minutes, while
the *ratio* of two shapes timed side by side, sample by sample, moves by a few percent (the
drift multiplies both). So every shape is timed interleaved with one reference shape of the
same flow/variant/phase/prompt length (:func:`measure_paired`)::

    ref, A, ref, B, ref, C, ref, A, ref, B, ...

and each sample ``a_i`` of a shape is paired with the mean of the reference samples right
before and right after it (``r_i``): ``ratio_i = a_i / r_i``. A row's ratio is the median of its
paired ratios pooled over all rounds, with a 90% bootstrap interval
(:func:`amoeba_core.stats.paired_ratio_ci`) that resamples *chunks* of ``CHUNK`` consecutive
pairs within a round (neighbouring pairs share host state, so they are resampled together;
with fewer than 4 chunks the pairs themselves are the units). Milliseconds come from the
reference's absolute level over the whole run (``ms = ratio * level``, see
:mod:`profiler.table`); the absolute p10/p50/p90 of the shape's own samples are kept too.

Stopping rule (distribution-free, no bootstrap), per shape and round: after ``min_repeats``
pairs, stop as soon as the 90% confidence interval of the median *paired ratio*, taken from
order statistics, is narrower than ``rel_ci`` on each side. For ``n`` sorted values the interval
is ``[x_(j), x_(k)]`` with ``j = floor(n/2 - 1.645*sqrt(n)/2)`` and ``k = ceil(n/2 +
1.645*sqrt(n)/2)``. Also stop at ``max_repeats`` pairs or when ``max_seconds`` of the shape's
own timed work have been spent; ``min_seconds`` keeps a fast shape sampling for that much
timed work first (past ``max_repeats``). A shape that has stopped leaves the cycle; the others
go on. The rule depends on how *precise* the ratio is, never on whether one sample is slow.

No sample is dropped. Each sample also records the process CPU time it used, ``util =
cpu_seconds / (wall_seconds * threads)`` (CPU flows with an explicit thread count): ~0.9-1.0
when the runtime's threads keep their cores, lower when another process takes them. It is a
*diagnostic* only (the row's median util is stored; ``--redo-contended`` re-times rows whose
median util is below ``min_util``): a filter on it would drop slow samples because they are
slow (for a fixed amount of CPU work util falls as wall time rises) and bias medians low. The
CPU time also includes the untimed part of ``run_once`` (e.g. decode-cache preparation), so
util is a rough indicator, not an exact share.

Rounds (drift between shapes of a block): the block is cycled ``rounds`` times, each round
with ``1/rounds`` of the budget (:meth:`MeasureConfig.per_round`), the order of shapes
reversed every other round so no shape is always first; a row pools the pairs of all rounds.

Rebuilds (drift between *loads*): a runtime can run one loaded copy of a model consistently
faster or slower than another copy of the same model (where its buffers landed, how its thread
pool was set up): intervals over one load's samples do not cover that, and two profiling runs
disagree by more than their intervals. With :attr:`MeasureConfig.rebuild` the reference's and
every shape's artifacts are closed and built again before each round after the first (warm-up
repeated), so a row pools ``rounds`` loads of each and its interval covers load-to-load
variation; rows carry protocol ``paired-v2`` instead of ``paired-v1``. Flows whose loads were
measured to differ rebuild by default (``Flow.rebuild_between_rounds``: ONNX Runtime, llama.cpp).

Memory: a block holds the reference and its shapes alive at once (two or more models); the
plan bounds their total weight bytes (:func:`profiler._blocks._blocks`).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from amoeba_core.stats import Interval, paired_ratio_ci

log = logging.getLogger(__name__)

PROTOCOL = "paired-v1"  # stored with every row timed by this module's paired protocol
PROTOCOL_REBUILD = "paired-v2"  # the same, with every artifact rebuilt between rounds (MeasureConfig.rebuild)
LEGACY = "legacy"  # rows of tables written before the paired protocol
CHUNK = 3  # consecutive pairs resampled together by the ratio's bootstrap


@dataclass(frozen=True)
class LatencyStats:
    """Raw samples (milliseconds) and the statistics derived from them."""

    samples_ms: tuple[float, ...]
    discarded: int = 0  # always 0 now (no sample is dropped); kept for older tables' column
    util: tuple[float, ...] = ()  # per-sample cpu/(wall*threads), diagnostic (NaN when unknown)

    @classmethod
    def from_samples(cls, xs: Iterable[float], discarded: int = 0, util: Iterable[float] = ()) -> LatencyStats:
        samples = tuple(float(x) for x in xs)
        if not samples:
            raise ValueError("LatencyStats needs at least one sample")
        return cls(samples, int(discarded), tuple(float(u) for u in util))

    def _q(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.samples_ms), q))

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def p50_ms(self) -> float:
        return self._q(50)

    @property
    def p10_ms(self) -> float:
        return self._q(10)

    @property
    def p90_ms(self) -> float:
        return self._q(90)

    @property
    def spread(self) -> float:
        """(p90 - p10) / p50: the noise of a single sample."""
        return (self.p90_ms - self.p10_ms) / self.p50_ms

    @property
    def median_rel_ci(self) -> float:
        """Half-width of the 90% order-statistic CI of the median, relative to the median."""
        return median_rel_ci(self.samples_ms)

    @property
    def util_median(self) -> float:
        """Median CPU use per thread of the samples (NaN when not recorded)."""
        u = [x for x in self.util if not math.isnan(x)]
        return float(np.median(u)) if u else math.nan


@dataclass(frozen=True)
class PairedStats(LatencyStats):
    """A shape's samples, each with its paired reference time (mean of the neighbouring
    reference samples) and the bootstrap unit it belongs to (round and chunk)."""

    ref_ms: tuple[float, ...] = ()
    units: tuple[int, ...] = ()

    @property
    def ratios(self) -> np.ndarray:
        return np.asarray(self.samples_ms) / np.asarray(self.ref_ms)

    @property
    def ratio(self) -> Interval:
        """Median paired ratio to the reference with its 90% bootstrap interval."""
        units = self.units if len(set(self.units)) >= 4 else None
        return paired_ratio_ci(self.samples_ms, self.ref_ms, units)


def median_rel_ci(samples: Iterable[float], z: float = 1.645) -> float:
    xs = sorted(samples)
    n = len(xs)
    if n < 3:
        return math.inf
    half = z * math.sqrt(n) / 2
    j = max(0, math.floor(n / 2 - half))
    k = min(n - 1, math.ceil(n / 2 + half) - 1)
    med = float(np.median(xs))
    return (xs[k] - xs[j]) / (2 * med) if med > 0 else math.inf


def median_ci_ms(samples: Sequence[float], z: float = 1.645) -> tuple[float, float]:
    """The 90% order-statistic interval of the median of ``samples`` (NaN, NaN for < 3)."""
    xs = sorted(float(x) for x in samples)
    n = len(xs)
    if n < 3:
        return math.nan, math.nan
    half = z * math.sqrt(n) / 2
    return xs[max(0, math.floor(n / 2 - half))], xs[min(n - 1, math.ceil(n / 2 + half) - 1)]


@dataclass(frozen=True)
class MeasureConfig:
    warmup: int = 2
    min_repeats: int = 12
    max_repeats: int = 60
    max_seconds: float = 2.0
    rel_ci: float = 0.02
    min_util: float = 0.85  # diagnostic threshold: rows below it are reported (and --redo-contended)
    rounds: int = 3  # interleaved passes over a block of shapes (see "Rounds" above)
    min_seconds: float = 1.5  # keep sampling until this much timed work, even when the ratio is known
    # rebuild the reference's and the shapes' artifacts before every round but the first;
    # None: the flow's default (Flow.rebuild_between_rounds, resolved by profiler.plan.make_plan)
    rebuild: bool | None = None

    @property
    def protocol(self) -> str:
        """Stored with every row and part of its key: rows timed with and without rebuilding never mix."""
        return PROTOCOL_REBUILD if self.rebuild else PROTOCOL

    def __post_init__(self) -> None:
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError("need 1 <= min_repeats <= max_repeats")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise ValueError("need 0 <= min_seconds <= max_seconds")

    def per_round(self) -> MeasureConfig:
        """The budget of one round: ``1/rounds`` of the repeats and seconds (warm-up kept)."""
        if self.rounds == 1:
            return self
        r = self.rounds
        lo = max(2, math.ceil(self.min_repeats / r))
        return replace(self, min_repeats=lo, max_repeats=max(lo, math.ceil(self.max_repeats / r)),
                       max_seconds=self.max_seconds / r, min_seconds=self.min_seconds / r, rounds=1)


MAX_SAMPLES = 100_000  # bound on min_seconds sampling (a run_once that reports ~0 s would never end)
QUICK = MeasureConfig(warmup=1, min_repeats=3, max_repeats=8, max_seconds=0.5, rel_ci=0.05, rounds=1, min_seconds=0)


def _timed(fn: Callable[[], float], cpu_threads: int | None) -> tuple[float, float]:
    """(milliseconds, util) of one call; util is NaN without a thread count."""
    c0 = time.process_time()
    s = float(fn())
    cpu = time.process_time() - c0
    util = cpu / (s * cpu_threads) if cpu_threads and s > 0 else math.nan
    return s * 1000.0, util


def _enough(n: int, spent: float, cfg: MeasureConfig, values: Sequence[float]) -> bool:
    """The stopping rule (module docstring) after ``n`` samples and ``spent`` timed seconds."""
    if spent < cfg.min_seconds and n < MAX_SAMPLES:  # a fast row keeps sampling, past max_repeats
        return False
    if n >= cfg.max_repeats:
        return True
    return n >= cfg.min_repeats and (median_rel_ci(values) <= cfg.rel_ci or spent >= cfg.max_seconds)


def measure(
    fn: Callable[[], float], config: MeasureConfig | None = None, cpu_threads: int | None = None
) -> LatencyStats:
    """Time ``fn`` alone (it returns the seconds of one synchronised run): warm-up, then samples
    until the stopping rule holds for the samples' median. Every sample is kept.

    ``cpu_threads``: the thread count of a CPU flow, to record the util diagnostic.
    """
    cfg = config or MeasureConfig()
    for _ in range(cfg.warmup):
        fn()
    xs: list[float] = []
    us: list[float] = []
    spent = 0.0
    while True:
        ms, u = _timed(fn, cpu_threads)
        xs.append(ms)
        us.append(u)
        spent += ms / 1000.0
        if _enough(len(xs), spent, cfg, xs):
            break
    stats = LatencyStats.from_samples(xs, 0, us)
    log.debug("measured n=%d p50=%.3f ms ci=%.3f util=%.2f", stats.n, stats.p50_ms, stats.median_rel_ci,
              stats.util_median)
    return stats


@dataclass
class _Track:
    fn: Callable[[], float]
    samples: list[float] = field(default_factory=list)
    refs: list[float] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    util: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class PairedBlock:
    """What :func:`measure_paired` returns: one :class:`PairedStats` per shape, and every
    reference sample of the block (its absolute level in this block)."""

    shapes: tuple[PairedStats, ...]
    reference: LatencyStats


def measure_paired(
    fns: Sequence[Callable[[], float]],
    ref_fn: Callable[[], float],
    config: MeasureConfig | None = None,
    cpu_threads: int | None = None,
    on_round: Callable[[int], None] | None = None,
    rebuild: Callable[[], tuple[Sequence[Callable[[], float]], Callable[[], float]]] | None = None,
) -> PairedBlock:
    """Time every ``fns[i]`` interleaved with ``ref_fn``, sample by sample (module docstring).

    ``on_round(r)`` is called after round ``r`` (0-based) of the block. ``rebuild()``, when given,
    is called before every round but the first and returns fresh ``(fns, ref_fn)`` (same order),
    which are warmed up again. With no ``fns`` the reference alone is timed by :func:`measure`
    (its own row needs no pairing: ratio 1).
    """
    cfg = config or MeasureConfig()
    if not fns:
        ref = measure(ref_fn, replace(cfg, rounds=1), cpu_threads)
        if on_round:
            for r in range(cfg.rounds):
                on_round(r)
        return PairedBlock((), ref)
    rc = cfg.per_round()
    for f in (ref_fn, *fns):
        for _ in range(cfg.warmup):
            f()
    tracks = [_Track(f) for f in fns]
    ref_ms: list[float] = []
    ref_util: list[float] = []

    def ref_sample() -> float:
        ms, u = _timed(ref_fn, cpu_threads)
        ref_ms.append(ms)
        ref_util.append(u)
        return ms

    unit_base = 0
    for r in range(cfg.rounds):
        if r and rebuild is not None:
            new_fns, ref_fn = rebuild()
            if len(new_fns) != len(tracks):
                raise ValueError(f"rebuild returned {len(new_fns)} callables for {len(tracks)} shapes")
            for t, f in zip(tracks, new_fns):
                t.fn = f
            for f in (ref_fn, *new_fns):
                for _ in range(cfg.warmup):
                    f()
        order = tracks if r % 2 == 0 else tracks[::-1]
        n_round = {id(t): 0 for t in order}
        spent = {id(t): 0.0 for t in order}
        active = list(order)
        prev = ref_sample()
        while active:
            for t in list(active):
                ms, u = _timed(t.fn, cpu_threads)
                nxt = ref_sample()
                k = n_round[id(t)]
                t.samples.append(ms)
                t.refs.append((prev + nxt) / 2)
                t.units.append(unit_base + k // CHUNK)
                t.util.append(u)
                prev = nxt
                n_round[id(t)] = k + 1
                spent[id(t)] += ms / 1000.0
                this_round = np.asarray(t.samples[-(k + 1):]) / np.asarray(t.refs[-(k + 1):])
                if _enough(k + 1, spent[id(t)], rc, this_round):
                    active.remove(t)
        unit_base += 1 + max(n_round.values()) // CHUNK
        if on_round:
            on_round(r)
    shapes = tuple(
        PairedStats(tuple(t.samples), 0, tuple(t.util), tuple(t.refs), tuple(t.units)) for t in tracks
    )
    return PairedBlock(shapes, LatencyStats.from_samples(ref_ms, 0, ref_util))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def environment(
    threads: int | None = None, dtype: str | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What affects timing and can be read without privileges."""
    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "dtype": dtype,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            p: v
            for p in ("torch", "transformers", "numpy", "llama_cpp_python", "onnxruntime", "apache-tvm")
            if (v := _version(p))
        },
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cur_freq_khz": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        "loadavg": _read("/proc/loadavg"),
    }
    if extra:
        env.update(extra)
    return env
