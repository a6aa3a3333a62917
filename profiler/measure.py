"""The timing protocol: warm-up, repeats until the median is known well enough, statistics.

Stopping rule (distribution-free, no bootstrap): after ``min_repeats`` samples, stop as soon
as the 90% confidence interval of the median, taken from order statistics, is narrower than
``rel_ci`` of the median on each side. For ``n`` sorted samples the interval is
``[x_(j), x_(k)]`` with ``j = floor(n/2 - 1.645*sqrt(n)/2)`` and ``k = ceil(n/2 + 1.645*sqrt(n)/2)``
(the binomial approximation to the median's rank). Also stop at ``max_repeats`` samples or
when ``max_seconds`` of timed work have been spent; the statistics record ``n`` and the
p10/p90 spread so a reader sees how noisy the row was. ``min_seconds`` keeps a fast row
sampling for that much timed work first (past ``max_repeats``): a 1 ms row otherwise stops
after a few milliseconds, too short to average anything that moves on this host.

Contention filter (CPU flows with an explicit thread count): each sample also records the
process CPU time it used, ``util = cpu_seconds / (wall_seconds * threads)``. Undisturbed, the
runtime's threads keep their cores busy (util ~0.9-1.0 for PyTorch on this host); when
another process takes the cores, util drops (0.5-0.75 measured with one competing busy
loop). Samples with ``util < min_util`` are set aside and the protocol keeps sampling (up to
3x the caps) to collect clean ones; if too few clean samples arrive, all samples are used and
``discarded`` says how many were contended. Nothing is corrected or rescaled: samples are
kept or set aside, never altered.

Rounds (drift between rows): on this shared VM a row's level moves by 10-40% from one
half-minute to the next while its own samples agree within 5% (seen in the pytorch table:
rows timed in the first pass over a grid were consistently slower than their neighbours timed
a minute later). One row measured in one go cannot see that. With ``rounds > 1`` the profiler
(:func:`profiler.plan.run_profile`) measures a block of shapes round-robin, ``rounds`` times,
each round with ``1/rounds`` of the budget (:meth:`MeasureConfig.per_round`), and a row's
statistics come from its samples of every round: slow drift becomes within-row spread that the
median absorbs, instead of a bias between rows.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyStats:
    """Raw samples (milliseconds) and the statistics derived from them."""

    samples_ms: tuple[float, ...]
    discarded: int = 0  # contended samples set aside (see the module docstring)

    @classmethod
    def from_samples(cls, xs: Iterable[float], discarded: int = 0) -> LatencyStats:
        samples = tuple(float(x) for x in xs)
        if not samples:
            raise ValueError("LatencyStats needs at least one sample")
        return cls(samples, int(discarded))

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


@dataclass(frozen=True)
class MeasureConfig:
    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 40
    max_seconds: float = 2.0
    rel_ci: float = 0.02
    min_util: float = 0.85
    rounds: int = 3  # interleaved passes over a block of shapes (see "Rounds" above)
    min_seconds: float = 1.5  # keep sampling until this much timed work, even when the median is known

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


def measure(
    fn: Callable[[], float], config: MeasureConfig | None = None, cpu_threads: int | None = None
) -> LatencyStats:
    """Time ``fn`` (which returns the seconds of one synchronised run) by the protocol above.

    ``cpu_threads``: the thread count of a CPU flow, to enable the contention filter.
    """
    cfg = config or MeasureConfig()
    for _ in range(cfg.warmup):
        fn()
    clean: list[float] = []
    contended: list[float] = []
    spent = 0.0
    while True:
        c0 = time.process_time()
        s = float(fn())
        cpu = time.process_time() - c0
        spent += s
        if cpu_threads and s > 0 and cpu / (s * cpu_threads) < cfg.min_util:
            contended.append(s * 1000.0)
        else:
            clean.append(s * 1000.0)
        n_all = len(clean) + len(contended)
        if spent < cfg.min_seconds and n_all < MAX_SAMPLES:  # a fast row keeps sampling, past max_repeats
            continue
        if len(clean) >= cfg.max_repeats:
            break
        if len(clean) >= cfg.min_repeats and (median_rel_ci(clean) <= cfg.rel_ci or spent >= cfg.max_seconds):
            break
        limit = 3 if contended else 1  # wait out contention, within bounds
        if n_all >= cfg.max_repeats * limit or spent >= cfg.max_seconds * limit:
            break
    if len(clean) >= cfg.min_repeats:
        stats = LatencyStats.from_samples(clean, len(contended))
    else:
        log.warning("only %d uncontended samples; keeping all %d", len(clean), len(clean) + len(contended))
        stats = LatencyStats.from_samples(clean + contended, len(contended))
    log.debug(
        "measured n=%d p50=%.3f ms ci=%.3f discarded=%d", stats.n, stats.p50_ms, stats.median_rel_ci, stats.discarded
    )
    return stats


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
