"""The query API over HTTP (FastAPI): ``GET /devices``, ``/fronts/{device}/{flow}``, ``/query``.

Bad input gets a 4xx with a reason: 422 for malformed parameters (FastAPI validation), 404 for
an unknown device or flow (the reason lists the known ones), 401 for a missing or wrong bearer
token. OpenAPI docs are at ``/docs``. Handlers are ``async``: a query is a
microsecond binary search on an index warmed at start-up, so it never blocks the event loop
(an index not warmed yet, e.g. a first ``e2e`` query, is built once on first use). ``amoeba serve`` binds 127.0.0.1 by default and refuses
another address without a token.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from amoeba_core.errors import AmoebaError
from search.query import Point, QueryIndex

log = logging.getLogger(__name__)

Phase = Literal["decode", "prefill", "e2e"]


class ShapeOut(BaseModel):
    key: str = Field(description="Full shape key: d<depth>-w<width>-<layer hash>")
    depth: int
    width: float
    accuracy: float = Field(description="Next-token top-1 accuracy on held-out text")
    ppl: Optional[float] = Field(None, description="Perplexity on the same text")
    latency_ms: float
    latency_source: str = Field(description="measured | per-layer | predicted | roofline")
    measured_ms: Optional[float] = None
    predicted_ms: Optional[float] = None

    @classmethod
    def of(cls, p: Point) -> ShapeOut:
        return cls(**asdict(p))


class DevicesOut(BaseModel):
    model: str
    devices: dict[str, list[str]] = Field(description="device -> flows with a latency table")


class FrontOut(BaseModel):
    device: str
    flow: str
    phase: str
    front: list[ShapeOut]
    n_evaluated: int


class QueryOut(BaseModel):
    feasible: bool
    device: str
    flow: str
    phase: str
    budget_ms: float
    shape: Optional[ShapeOut]
    fastest: ShapeOut
    message: str
    export_command: Optional[str]


def create_app(run_dir: Path | str, root: Path | None = None, token: str | None = None,
               warm: bool = True) -> FastAPI:
    index = QueryIndex(run_dir, root)
    if warm:
        index.warm()
    bearer = HTTPBearer(auto_error=False)

    def auth(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="amoeba", version="0.1.0", dependencies=[Depends(auth)],
                  description=f"Accuracy-latency fronts and best-shape queries for {index.model}.")

    @app.exception_handler(AmoebaError)
    async def _amoeba_error(_: Request, exc: AmoebaError) -> JSONResponse:
        return JSONResponse(status_code=404 if "unknown" in str(exc) else 400, content={"detail": str(exc)})

    @app.get("/devices", response_model=DevicesOut)
    async def devices() -> DevicesOut:
        return DevicesOut(model=index.model, devices=index.tables())

    @app.get("/fronts/{device}/{flow}", response_model=FrontOut)
    async def front(device: str, flow: str, phase: Phase = "decode") -> FrontOut:
        pts = index.front(device, flow, phase)
        return FrontOut(device=device, flow=flow, phase=phase, front=[ShapeOut.of(p) for p in pts],
                        n_evaluated=len(index.records))

    @app.get("/query", response_model=QueryOut)
    async def query(device: str = Query(..., max_length=200), flow: str = Query(..., max_length=200),
              budget_ms: float = Query(..., gt=0, allow_inf_nan=False, description="Latency budget in ms"),
              phase: Phase = "decode") -> QueryOut:
        a = index.best(device, flow, budget_ms, phase)
        return QueryOut(feasible=a.feasible, device=a.device, flow=a.flow, phase=a.phase, budget_ms=a.budget_ms,
                        shape=ShapeOut.of(a.shape) if a.shape else None, fastest=ShapeOut.of(a.fastest),
                        message=a.message, export_command=a.export_command)

    return app


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
