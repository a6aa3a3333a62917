"""The one latency-row schema: the pydantic model a push is validated with is the store's table.

:class:`LatencyRow` lists every column of a row with its type; :data:`SQL_COLUMNS` derives the
store's typed SQL columns from it (:mod:`profiler.store`), so a latency is a ``p50_ms`` column a
query can select. The checks: names and widths in range, every ``*_ms`` finite and positive,
p10 <= p50 <= p90, a known ``source``; a ``measured`` row carries its timing samples (p50 inside
their range), a ``per-layer`` row (composed from measured rows) and computed rows (``predicted``,
``roofline``, ``transferred``) carry none, so a computed number can never pass as measured.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SOURCES: tuple[str, ...] = ("measured", "per-layer", "predicted", "roofline", "transferred")  # append new sources here
MEASURED = ("measured",)  # sources that are timings and must carry their samples
COMPOSED = ("per-layer",)  # composed from measured rows (no samples of its own, n > 0)
LEGACY = "legacy"  # the protocol of rows written before the protocol was recorded

PositiveMs = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Ratio = Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]]


def _clip(v: object, n: int = 30) -> str:
    s = str(v)
    return repr(s) if len(s) <= n else f"{s[:n]!r}... ({len(s)} chars)"


class LatencyRow(BaseModel):
    """One latency row (a shape's time in one phase on one device/flow/model/variant)."""

    model_config = ConfigDict(extra="ignore")

    variant: str = Field(min_length=1, max_length=64)
    depth: int = Field(ge=1, le=100_000)
    width: float = Field(gt=0, le=1, allow_inf_nan=False)  # the MLP width when attn_width is set, else both
    attn_width: Optional[float] = Field(None, gt=0, le=1)  # None: one width ratio
    phase: Literal["prefill", "decode"]
    batch: int = Field(ge=1)
    prompt_len: int = Field(ge=0)
    source: str
    threads: int = Field(0, ge=0)
    protocol: str = Field(LEGACY, max_length=32)
    p50_ms: PositiveMs
    p10_ms: Optional[PositiveMs] = None
    p90_ms: Optional[PositiveMs] = None
    n: int = Field(0, ge=0)
    discarded: int = Field(0, ge=0)
    samples_ms: list[PositiveMs] = Field(default_factory=list)
    ratio: Ratio = None  # median paired ratio to ``reference`` and its 90% interval
    ratio_lo: Ratio = None
    ratio_hi: Ratio = None
    reference: str = Field("", max_length=64)
    util: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    versions: str = Field("", max_length=4000)
    created: Optional[str] = Field(None, max_length=40)

    @field_validator("attn_width", "ratio", "ratio_lo", "ratio_hi", "util", "p10_ms", "p90_ms", mode="before")
    @classmethod
    def _nan_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {_clip(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LatencyRow:
        if self.p10_ms is not None and self.p10_ms > self.p50_ms * (1 + 1e-9):
            raise ValueError(f"p10_ms {self.p10_ms:g} > p50_ms {self.p50_ms:g}")
        if self.p90_ms is not None and self.p90_ms < self.p50_ms * (1 - 1e-9):
            raise ValueError(f"p90_ms {self.p90_ms:g} < p50_ms {self.p50_ms:g}")
        if self.source in MEASURED:
            if not self.samples_ms:
                raise ValueError(f"a {self.source} row carries its timing samples (samples_ms is empty): "
                                 "computed rows are labelled predicted, transferred or roofline")
            lo, hi = min(self.samples_ms), max(self.samples_ms)
            if not lo * (1 - 1e-6) <= self.p50_ms <= hi * (1 + 1e-6):
                raise ValueError(f"p50_ms {self.p50_ms:g} lies outside its samples [{lo:g}, {hi:g}]")
        elif self.source in COMPOSED:
            if self.samples_ms:
                raise ValueError(f"a {self.source} row is composed, it carries no samples of its own")
        elif self.samples_ms:
            raise ValueError(f"a {self.source} row is computed, it cannot carry timing samples")
        return self


def row_error(e: Exception) -> str:
    """One line from a pydantic ValidationError (the first problem, with its field)."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return f"{loc}: {first.get('msg', '')}"[:300] if loc else str(first.get("msg", ""))[:300]
    return str(e).splitlines()[0][:300]


def _sql_type(annotation: Any) -> str:
    text = str(annotation)
    if "list" in text:
        return "json"
    if "int" in text:
        return "int"
    if "float" in text or "Ratio" in text or "PositiveMs" in text:
        return "float"
    return "str"


# column -> "int" | "float" | "str" | "json", in the schema's order
SQL_COLUMNS: dict[str, str] = {name: _sql_type(f.annotation) for name, f in LatencyRow.model_fields.items()}
