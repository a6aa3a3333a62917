"""The data of :mod:`profiler.transfer`: a latency line (its key and measured milliseconds per
shape), a transferred row, and which known lines and shapes to learn from (names re-exported by
``profiler.transfer``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Shape = tuple[int, float]  # (depth, width rounded to 3 decimals)


def line_point(depth: int, width: float) -> Shape:
    return int(depth), round(float(width), 3)


@dataclass(frozen=True)
class LineKey:
    """What a latency line is: one table's rows of one variant, thread count, phase, prompt, batch."""

    device: str
    flow: str
    model: str
    variant: str
    threads: int  # 0: the runtime's default
    phase: str
    prompt_len: int
    batch: int = 1

    @property
    def label(self) -> str:
        return f"{self.device}/{self.flow}/{self.variant}/t{self.threads}"

    @property
    def config(self) -> tuple:
        """The same line apart from the thread count (to leave out every thread count of a config)."""
        return (self.device, self.flow, self.variant)


@dataclass
class Line:
    key: LineKey
    ms: dict[Shape, float]  # measured milliseconds per shape


@dataclass(frozen=True)
class Transferred:
    depth: int
    width: float
    ms: float
    lo_ms: float
    hi_ms: float
    sd_log: float


def common_shapes(lines: Sequence[Line]) -> list[Shape]:
    sets = [set(ln.ms) for ln in lines]
    common = set.intersection(*sets) if sets else set()
    return sorted(common, key=lambda s: (-s[1], s[0]))


def select_references(lines: Sequence[Line], wanted: Iterable[Shape] | None = None,
                      min_shapes: int = 2) -> tuple[list[Line], list[Shape]]:
    """The known lines to learn from and the shapes they all measured (of ``wanted``, if given).

    A line that lacks shapes the others share is dropped (fewest shapes first) while that
    enlarges the common set; the result keeps as many shapes as possible, then as many lines.
    """
    wanted_set = set(wanted) if wanted is not None else None
    pool = [ln for ln in lines if ln.ms]
    best: tuple[list[Line], list[Shape]] = ([], [])
    while pool:
        shapes = [s for s in common_shapes(pool) if wanted_set is None or s in wanted_set]
        if len(shapes) > len(best[1]) or (len(shapes) == len(best[1]) and len(pool) > len(best[0])):
            best = (list(pool), shapes)
        pool = sorted(pool, key=lambda ln: len(ln.ms))[1:]
    if len(best[1]) < min_shapes:
        return [], []
    return best
