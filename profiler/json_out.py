"""``--json`` answers of `amoeba predict` and `amoeba table show` (the HTTP service has no route for
these, so their models live here, in the style of :mod:`search.service`'s)."""

from __future__ import annotations

import math
from typing import Any, Optional

from pydantic import BaseModel, Field


class PredictOut(BaseModel):
    device: str
    flow: str
    model: str
    shape: str = Field(description="Grid key of the shape, e.g. d24-w0.750")
    phase: str
    prompt_len: Optional[int] = None
    variant: Optional[str] = None
    ms: float = Field(description="The answer: measured where the table has the shape, else predicted")
    source: str = Field(description="measured | per-layer | predicted | transferred | roofline")
    lo_ms: Optional[float] = Field(None, description="Low end of the 90% interval of ms")
    hi_ms: Optional[float] = None
    extrapolated: bool = Field(False, description="Predicted outside the measured depths/widths")
    measured_ms: Optional[float] = None
    predicted_ms: Optional[float] = None
    roofline_ms: Optional[float] = Field(None, description="Roofline floor (a bound, not a measurement)")
    roofline_only: bool = Field(False, description="The device has no measured table, only its spec sheet")
    self_check: Optional[dict[str, float]] = Field(None, description="Predictor's leave-one-depth-out errors")


class TableRowOut(BaseModel):
    variant: str
    phase: str
    prompt_len: int
    threads: Optional[int] = None
    shape: str
    ms: float = Field(description="ratio x reference level where paired, else p50")
    ms_lo: Optional[float] = None
    ms_hi: Optional[float] = None
    ratio: Optional[float] = None
    p50_ms: Optional[float] = None
    p10_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    n: Optional[int] = None
    util: Optional[float] = None
    source: str


class TableOut(BaseModel):
    device: str
    flow: str
    model: str
    path: str
    n_rows: int = Field(description="Rows in the whole table")
    rows: list[TableRowOut] = Field(description="The rows shown (phase filter and limit applied)")


def num(v: Any) -> Optional[float]:
    """A float, or None for a missing/NaN value."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def integer(v: Any) -> Optional[int]:
    f = num(v)
    return None if f is None else int(f)
