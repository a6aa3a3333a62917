"""``--json`` answers of `amoeba query` and `amoeba search`: the same pydantic models (and so the same
fields) as the HTTP service's ``/query`` and ``/fronts/{device}/{flow}`` (:mod:`search.service`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from search.query import Answer, QueryIndex, variant_note


def query_json(ans: Answer) -> str:
    """One :class:`search.query.Answer` as the service's ``QueryOut`` JSON."""
    from search.api_models import QueryOut, ShapeOut

    return QueryOut(feasible=ans.feasible, device=ans.device, flow=ans.flow, phase=ans.phase,
                    budget_ms=ans.budget_ms, shape=ShapeOut.of(ans.shape) if ans.shape is not None else None,
                    fastest=ShapeOut.of(ans.fastest), message=ans.message, export_command=ans.export_command,
                    variant=ans.variant, variants=list(ans.variants), variant_note=ans.variant_note,
                    weights=ans.weights, adapters=ans.adapters).model_dump_json()


def front_json(run: Path, root: Optional[Path], device: str, flow: str, phase: str = "decode",
               variant: Optional[str] = None, prompt_len: Optional[int] = None) -> str:
    """The stored front of ``run`` on one table as the service's ``FrontOut`` JSON."""
    from search.api_models import FrontOut, ShapeOut

    index = QueryIndex(run, root, prompt_len)
    ix = index.index(device, flow, phase, variant)
    return FrontOut(device=device, flow=flow, phase=phase, front=[ShapeOut.of(p) for p in ix.front()],
                    n_evaluated=len(index.records), variant=ix.variant, variants=list(ix.variants),
                    variant_note=variant_note(ix.variant, ix.variants) if variant is None else None,
                    weights=index.weights, adapters=index.adapters).model_dump_json()
