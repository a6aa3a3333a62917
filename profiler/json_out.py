"""``--json`` answers of `amoeba predict` and `amoeba table show` (the HTTP service has no route for
these, so their models live here, in the style of :mod:`search.service`'s)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import pandas as pd

    from profiler.lookup import LatencyEstimate, LatencyModel
    from profiler.table import LatencyTable


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


def predict_json(m: LatencyModel, device: str, flow: str, model: str, shape: str, phase: str,
                 est: LatencyEstimate) -> str:
    """`amoeba predict --json`: the estimate and the predictor's self-check."""
    chk = None
    if m.predictor is not None and m.table is not None:
        rows = m.table.rows(phase=phase, variant=m.variant, prompt_len=m.prompt_len, batch=1, source="measured")
        got = m.predictor.self_check(m.table.corrected(rows[rows["threads"] == m.threads] if m.threads is not None
                                                       else rows))
        chk = {k: float(v) for k, v in got.items()} if got.get("n") else None
    return PredictOut(device=device, flow=flow, model=model, shape=shape, phase=phase, prompt_len=m.prompt_len,
                      variant=m.variant, ms=est.ms, source=est.source, lo_ms=est.lo_ms, hi_ms=est.hi_ms,
                      extrapolated=est.extrapolated, measured_ms=est.measured_ms, predicted_ms=est.predicted_ms,
                      roofline_ms=est.roofline_ms, roofline_only=bool(m.device.roofline_only),
                      self_check=chk).model_dump_json()


def table_json(tab: LatencyTable, df: pd.DataFrame) -> str:
    """`amoeba table show --json`: the rows shown (corrected ms, as the text table prints them)."""
    from profiler.table import row_width_key
    from amoeba_core.shape import grid_key

    rows = [TableRowOut(variant=x.variant, phase=x.phase, prompt_len=int(x.prompt_len), threads=integer(x.threads),
                        shape=grid_key(x.depth, row_width_key(x.width, x.attn_width)), ms=float(x.ms),
                        ms_lo=num(x.ms_lo), ms_hi=num(x.ms_hi), ratio=num(x.ratio), p50_ms=num(x.p50_ms),
                        p10_ms=num(x.p10_ms), p90_ms=num(x.p90_ms), n=integer(x.n), util=num(x.util),
                        source=x.source) for _, x in df.iterrows()]
    return TableOut(device=tab.device, flow=tab.flow, model=tab.model, path=str(tab.path), n_rows=len(tab.df),
                    rows=rows).model_dump_json()
