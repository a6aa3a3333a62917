"""The page for people at ``/`` of ``amoeba serve``: fronts, evaluated shapes and a budget slider.

Plain HTML + JavaScript from ``search/static/`` (no build step, no external fetch: the chart is
SVG drawn by ``app.js``). The page and its static files hold no data, so they load without the
token; everything they show comes from the token-protected JSON routes (``/devices``,
``/fronts/{device}/{flow}``, ``/query`` and ``/web/shapes/{device}/{flow}`` below), which the page
calls with ``Authorization: Bearer <token>``: the token is read from the URL fragment
(``/#token=...``, which browsers never send to the server) or typed into the page's token field.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from search.query import Point

STATIC = Path(__file__).with_name("static")


class Shapes(Protocol):
    """What the page needs of the service's index (``QueryIndex`` or the service's refreshing wrapper)."""

    model: str

    def points(self, device: str, flow: str, phase: str = ..., variant: str | None = ...) -> list[Point]: ...


def mount_web(app: FastAPI, index: Shapes) -> None:
    """Add ``/`` (the page), ``/static/*`` (its files) and ``/web/shapes/{device}/{flow}`` to ``app``.

    ``/`` and the static files are added to ``app.state.public_paths`` (when the app has one: the
    token gate lets those exact paths through); ``/web/shapes`` stays behind the token.
    """
    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.add_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    public = getattr(app.state, "public_paths", None)
    if public is not None:
        public.update({"/", *(f"/static/{f.name}" for f in STATIC.iterdir() if f.is_file())})

    @app.get("/web/shapes/{device}/{flow}", tags=["web"])
    async def shapes(device: str = PathParam(..., max_length=200), flow: str = PathParam(..., max_length=200),
                     phase: Literal["decode", "prefill", "e2e"] = "decode",
                     variant: Optional[str] = Query(None, max_length=200)) -> dict[str, Any]:
        """Every evaluated shape with its latency on (device, flow, phase[, variant]), fastest first."""
        pts = index.points(device, flow, phase, variant)
        return {"device": device, "flow": flow, "phase": phase, "variant": variant, "model": index.model,
                "shapes": [asdict(p) for p in pts]}

