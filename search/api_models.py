"""The service's answers as typed JSON: the response models of ``amoeba serve`` and ``--json``.

One schema for every reader of an answer: the HTTP routes of :mod:`search.service` and the CLI's
``--json`` output (:mod:`search.json_out`) both serialise through these models.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal, Optional

from pydantic import BaseModel, Field

from search.query import Point


class ShapeOut(BaseModel):
    key: str = Field(description="Full shape key: d<depth>-w<width>-<layer hash>")
    depth: int
    width: float
    accuracy: float = Field(description="Next-token top-1 accuracy on held-out text")
    ppl: Optional[float] = Field(None, description="Perplexity on the same text")
    latency_ms: float
    latency_source: str = Field(description="measured | per-layer | predicted | transferred | roofline")
    measured_ms: Optional[float] = None
    predicted_ms: Optional[float] = None
    lo_ms: Optional[float] = Field(None, description="Low end of the latency's interval (when the profiler gives one)")
    hi_ms: Optional[float] = Field(None, description="High end of the latency's interval")
    extrapolated: Optional[bool] = Field(None, description="Latency predicted outside the measured widths/depths")
    accuracy_lo: Optional[float] = Field(None, description="90% interval of the accuracy (when stored)")
    accuracy_hi: Optional[float] = None

    @classmethod
    def of(cls, p: Point) -> ShapeOut:
        return cls(**asdict(p))


class DevicesOut(BaseModel):
    model: str
    devices: dict[str, list[str]] = Field(description="device -> flows with a latency table")
    variants: dict[str, dict[str, list[str]]] = Field(default_factory=dict,
                                                      description="device -> flow -> variants (default first)")


class VariantOut(BaseModel):
    variant: Optional[str] = Field(None, description="The variant the latencies are of")
    variants: list[str] = Field(default_factory=list, description="Every variant of the table")
    variant_note: Optional[str] = Field(None, description="Set when several exist and none was asked for")
    weights: Literal["stage1", "stage2"] = Field("stage1", description="Which model the accuracies are of: the "
                                                 "Stage 1 model, or the Stage 2 fine-tuned one (search --adapters)")
    adapters: Optional[str] = Field(None, description="The Stage 2 adapters the accuracies were scored with")


class FrontOut(VariantOut):
    device: str
    flow: str
    phase: str
    front: list[ShapeOut]
    n_evaluated: int


class QueryOut(VariantOut):
    feasible: bool
    device: str
    flow: str
    phase: str
    budget_ms: float
    shape: Optional[ShapeOut]
    fastest: ShapeOut
    message: str
    export_command: Optional[str]


class RunOut(BaseModel):
    name: str
    model: Optional[str] = None
    records: int = Field(description="Accuracy records stored for the run")
    served: bool = Field(description="Whether this server answers /fronts and /query from it")


class RunsOut(BaseModel):
    served: str = Field(description="The run this server answers from")
    runs: list[RunOut]
    note: str = Field(description="How to answer from another stored run")


class PushOut(BaseModel):
    inserted: int
    present: int = Field(description="Rows already stored with the same values")
    conflicts: int = Field(description="Rows whose key is stored with other values (the stored row is kept)")
    conflict_keys: list[str]
    updated: list[str]
    revision: int
    served: bool = Field(description="Whether this server now answers from the pushed data")
