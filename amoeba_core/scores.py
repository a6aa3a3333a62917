"""A shape's score and its intervals: :class:`ShapeScore` (per-window NLL sums, right tokens and
token counts, with 90% bootstrap intervals) and :func:`compare` (paired differences on the same
windows). The protocol is described in :mod:`amoeba_core.evaluate`, which re-exports these names.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Sequence

from amoeba_core.errors import AmoebaError
from amoeba_core.stats import Interval, PairedDiff, grouped_mean_ci, paired_diff

if TYPE_CHECKING:
    import torch

MIN_DOC_UNITS = 8  # fewer documents than this: intervals resample windows instead
METRICS = ("ppl", "top1", "nll")


@dataclass(frozen=True)
class ShapeScore:
    """Accuracy of one shape on one split, with 90% intervals and the per-window data behind them.

    ``ppl_lo``/``ppl_hi``, ``top1_lo``/``top1_hi`` are None for a score without per-window data
    (built by hand, or by an older version). ``unit_*`` hold one entry per window, in window
    order; ``windows_id`` identifies the scored tokens, so :func:`compare` can refuse two
    scores that were not computed on the same windows.
    """

    shape_key: str
    split: str
    ppl: float
    top1_acc: float
    nll: float
    n_tokens: int
    seconds: float
    cached: bool = False
    ppl_lo: float | None = None
    ppl_hi: float | None = None
    top1_lo: float | None = None
    top1_hi: float | None = None
    ci_unit: str | None = None  # "document" | "window"
    n_units: int = 0
    windows_id: str | None = None
    unit_nll: tuple[float, ...] | None = None
    unit_correct: tuple[int, ...] | None = None
    unit_tokens: tuple[int, ...] | None = None
    unit_doc: tuple[int, ...] | None = None

    @classmethod
    def from_units(cls, shape_key: str, split: str, unit_nll: Sequence[float], unit_correct: Sequence[int],
                   unit_tokens: Sequence[int], seconds: float, unit_doc: Sequence[int] | None = None,
                   windows_id: str | None = None) -> ShapeScore:
        """A score and its intervals from per-window NLL sums, right tokens and token counts."""
        n = int(sum(unit_tokens))
        if n <= 0 or not (len(unit_nll) == len(unit_correct) == len(unit_tokens)):
            raise AmoebaError("a score needs one NLL sum, right-token count and token count per window")
        nll = math.fsum(unit_nll) / n
        base = cls(shape_key, split, math.exp(min(nll, 700.0)), int(sum(unit_correct)) / n, nll, n, seconds,
                   unit_nll=tuple(float(x) for x in unit_nll), unit_correct=tuple(int(x) for x in unit_correct),
                   unit_tokens=tuple(int(x) for x in unit_tokens),
                   unit_doc=None if unit_doc is None else tuple(int(x) for x in unit_doc), windows_id=windows_id)
        unit, nll_s, right, tok = base.units()
        ppl = grouped_mean_ci(nll_s, tok, transform=_exp)
        top1 = grouped_mean_ci(right, tok)
        return replace(base, ppl_lo=ppl.lo, ppl_hi=ppl.hi, top1_lo=top1.lo, top1_hi=top1.hi, ci_unit=unit,
                       n_units=ppl.n)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ShapeScore:
        """From :meth:`to_json` output (or an older cache line: unknown keys ignored, lists -> tuples)."""
        known = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in row.items() if k in known}
        return cls(**kw)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def has_units(self) -> bool:
        return self.unit_nll is not None and self.unit_correct is not None and self.unit_tokens is not None

    def units(self) -> tuple[str, list[float], list[float], list[float]]:
        """(unit kind, NLL sums, right tokens, token counts) per resampling unit: documents when
        the windows come from at least :data:`MIN_DOC_UNITS` documents, else windows."""
        if not self.has_units:
            raise AmoebaError(f"score of {self.shape_key} has no per-window data (an older cache entry); rescore it")
        nll, right, tok = list(self.unit_nll), [float(x) for x in self.unit_correct], [float(x) for x in self.unit_tokens]
        if self.unit_doc is None or len(set(self.unit_doc)) < MIN_DOC_UNITS:
            return "window", nll, right, tok
        order: dict[int, int] = {}
        for d in self.unit_doc:
            order.setdefault(d, len(order))
        g = [[0.0, 0.0, 0.0] for _ in order]
        for d, a, b, c in zip(self.unit_doc, nll, right, tok):
            row = g[order[d]]
            row[0] += a
            row[1] += b
            row[2] += c
        return "document", [r[0] for r in g], [r[1] for r in g], [r[2] for r in g]

    @property
    def ppl_ci(self) -> Interval | None:
        if self.ppl_lo is None or self.ppl_hi is None:
            return None
        return Interval(self.ppl, self.ppl_lo, self.ppl_hi, self.n_units)

    @property
    def top1_ci(self) -> Interval | None:
        if self.top1_lo is None or self.top1_hi is None:
            return None
        return Interval(self.top1_acc, self.top1_lo, self.top1_hi, self.n_units)

    def fmt(self) -> str:
        """``ppl 23.41 [22.80, 24.10]  top1 0.4012 [0.3950, 0.4080]`` (no brackets without an interval)."""
        ppl = self.ppl_ci.fmt(2) if self.ppl_ci else f"{self.ppl:.2f} [no interval]"
        top = self.top1_ci.fmt(4) if self.top1_ci else f"{self.top1_acc:.4f} [no interval]"
        return f"ppl {ppl}  top1 {top}"


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


def compare(a: ShapeScore, b: ShapeScore, metric: str = "ppl", seed: int = 0) -> PairedDiff:
    """Paired 90% interval of ``a - b`` in ``metric`` (``ppl``, ``top1`` or ``nll``) for two
    scores of the same windows, resampling the same units for both.

    ``.significant`` is False (``.verdict()`` says "not significant") when the interval contains
    0; ``.verdict(lower_is_better=metric != "top1", names=(...))`` names the better side.
    """
    if metric not in METRICS:
        raise AmoebaError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    for s in (a, b):
        if not s.has_units:
            raise AmoebaError(f"score of {s.shape_key} has no per-window data (an older cache entry); rescore it")
    same = (a.unit_tokens == b.unit_tokens and a.unit_doc == b.unit_doc and a.split == b.split
            and (a.windows_id is None or b.windows_id is None or a.windows_id == b.windows_id))
    if not same:
        raise AmoebaError(f"{a.shape_key} and {b.shape_key} were not scored on the same windows; "
                          "a paired comparison needs the same tokens")
    _, a_nll, a_right, tok = a.units()
    _, b_nll, b_right, _ = b.units()
    if metric == "top1":
        return paired_diff(a_right, b_right, tok, seed=seed)
    return paired_diff(a_nll, b_nll, tok, transform=_exp if metric == "ppl" else None, seed=seed)


def windows_id(ids: torch.Tensor) -> str:
    """A short hash of a window tensor's tokens (part of every cache key)."""
    return hashlib.sha1(ids.contiguous().cpu().numpy().astype("<i8").tobytes() + str(tuple(ids.shape)).encode()).hexdigest()[:10]


def _replace_cached(s: ShapeScore) -> ShapeScore:
    return replace(s, cached=True)
