"""The query API over HTTP (FastAPI), for one device or a fleet.

Routes: ``GET /devices``, ``/fronts/{device}/{flow}``, ``/query`` (each takes ``variant``), and
``POST /profiles`` / ``POST /runs`` (``amoeba push``: a device's spec and latency tables, or a
run's accuracy records). Data lives in the store (:mod:`profiler.store`: the profiles root's
SQLite file by default, PostgreSQL with ``--db``); at start the local run folder is merged into it
(and the local profiles when the store is another database). Each worker process answers from an
in-memory index of one revision of the store (:meth:`search.query.QueryIndex.from_store`: records,
device specs and latency rows read from the store directly); a push rebuilds the receiving
worker's index before it answers, and every worker polls the store's revision (at most every
``refresh_s``, off the event loop) and swaps in a new index when it moved. A query naming a device
the index does not know checks the revision at once, so a device is answered for right after its
push, on any worker. Fronts and answered points are serialised once per revision (cached JSON); a
query is a binary search plus string joins.

Bad input gets a 4xx with a reason: 422 for malformed parameters or a rejected push, 404 for an
unknown device, flow or variant (the reason lists the known ones), 401 for a missing or wrong
bearer token, 413 for a body over 64 MB. Errors never echo more than a clipped piece of the
request. With a token set, every route needs it (``Authorization: Bearer <token>``), the OpenAPI
pages ``/docs``, ``/redoc`` and ``/openapi.json`` included; only the web page's own files (``/``,
``/static/*``: no data, the page asks for the token) load without it. ``amoeba serve`` binds 127.0.0.1 by
default and refuses another address without a token.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal, Optional

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from amoeba_core.errors import AmoebaError
from search.api_models import DevicesOut, FrontOut, PushOut, QueryOut, RunOut, RunsOut, ShapeOut, VariantOut  # noqa: F401 (re-exported)
from search.fleet import ProfileIn, RunIn
from search.gate import TokenGate, cap, clip_errors
from search.query import Point, QueryIndex

log = logging.getLogger(__name__)

Phase = Literal["decode", "prefill", "e2e"]
PAGE_PATHS = ("/", "/static/")  # answer without the token (a trailing / is a prefix)


class Snapshot:
    """One revision of the store: its index + cached JSON answers."""

    def __init__(self, revision: int, index: QueryIndex) -> None:
        self.revision, self.index = revision, index
        self.cache: dict[tuple[Any, ...], bytes] = {}
        self._points: dict[int, str] = {}

    def point_json(self, p: Point) -> str:
        hit = self._points.get(id(p))
        if hit is None:
            hit = self._points[id(p)] = json.dumps(ShapeOut.of(p).model_dump())
        return hit


class Served:
    """What one worker answers from; ``points``/``front``/``best``/``model`` follow the current snapshot."""

    def __init__(self, db: Any, run: str, refresh_s: float = 0.5, prompt_len: int | None = None,
                 gen_len: int = 128, warm: bool = True, root: Path | None = None) -> None:
        self.db, self.run, self.refresh_s, self.warm = db, run, refresh_s, warm
        self.root = root  # the local profiles folder: device specs there when the store is its own
        self.prompt_len, self.gen_len = prompt_len, gen_len
        self._lock = threading.Lock()
        self._polling = False
        self._last_check = time.monotonic()
        self.last_error: str | None = None
        self.snap: Snapshot = self._build()

    # -- snapshots ------------------------------------------------------------------------
    def _build(self) -> Snapshot:
        rev = self.db.revision()  # read first: a push landing meanwhile moves it again, and is picked up
        index = QueryIndex.from_store(self.db.store, self.run, self.prompt_len, self.gen_len, root=self.root)
        if self.warm:
            index.warm()
        return Snapshot(rev, index)

    def rebuild(self) -> bool:
        """Swap in an index of the store's current revision (if it moved); True if swapped."""
        with self._lock:
            if self.db.revision() == self.snap.revision:
                return False
            try:
                new = self._build()
            except AmoebaError as e:  # keep answering from the last good index
                self.last_error = str(e)
                log.error("cannot refresh the index: %s", e)
                return False
            self.snap, self.last_error = new, None
            return True

    def check(self) -> None:
        """Called per request: at most every ``refresh_s``, poll the revision in a background thread."""
        now = time.monotonic()
        if now - self._last_check < self.refresh_s or self._polling:
            return
        self._last_check, self._polling = now, True

        def poll() -> None:
            try:
                self.rebuild()
            except Exception as e:  # noqa: BLE001 - a database hiccup must not kill the worker
                log.warning("revision poll failed: %s", e)
            finally:
                self._polling = False

        threading.Thread(target=poll, daemon=True).start()

    def close(self) -> None:
        self.db.dispose()

    # -- the QueryIndex surface (the web page uses these) ---------------------------------
    @property
    def model(self) -> str:
        return self.snap.index.model

    @property
    def index(self) -> QueryIndex:
        return self.snap.index

    def points(self, device: str, flow: str, phase: str = "decode", variant: str | None = None) -> list[Point]:
        return self.snap.index.points(device, flow, phase, variant)

    def front(self, device: str, flow: str, phase: str = "decode", variant: str | None = None) -> list[Point]:
        return self.snap.index.front(device, flow, phase, variant)

    def best(self, device: str, flow: str, budget_ms: float, phase: str = "decode", variant: str | None = None) -> Any:
        return self.snap.index.best(device, flow, budget_ms, phase, variant)

    def tables(self) -> dict[str, list[str]]:
        return self.snap.index.tables()


def seed(db: Any, run_dir: Path, root: Path | None) -> None:
    """Merge the local run folder (and the local profiles, when the store is not theirs) into the store."""
    from profiler.device import list_devices
    from search.db import default_url
    from search.fleet import profile_payload, push_profile, push_run, run_payload

    if db.url != default_url(root):
        for name in list_devices(root):
            rep = push_profile(profile_payload(name, root), db=db)
            if rep["conflicts"]:
                log.warning("%s: %d local rows differ from the stored ones (kept the stored): %s", name,
                            rep["conflicts"], rep["conflict_keys"][:3])
    if (Path(run_dir) / "search.yaml").is_file():
        push_run(run_payload(Path(run_dir)), db=db)


def create_app(run_dir: Path | str, root: Path | None = None, token: str | None = None, warm: bool = True,
               db: str | None = None, seed_local: bool = True, refresh_s: float = 0.5) -> FastAPI:
    """The service for run ``run_dir`` (its folder name in the store) over store ``db`` (default: the root's)."""
    from search.db import FleetDB, default_url

    run_dir = Path(run_dir)
    store = FleetDB(db or default_url(root))
    if seed_local:
        seed(store, run_dir, root)
    served = Served(store, run_dir.resolve().name, refresh_s, warm=warm, root=root)
    atexit.register(served.close)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        served.close()

    app = FastAPI(title="amoeba", version="0.2.0", lifespan=lifespan,
                  description=f"Accuracy-latency fronts and best-shape queries for {served.model}.")
    app.state.served = served
    app.state.public_paths = set()  # paths that answer without the token (none by default)
    app.add_middleware(QueryFastPath, served=served)  # inside the gate: the token is checked first
    app.add_middleware(TokenGate, token=token, public=app.state.public_paths)

    @app.exception_handler(AmoebaError)
    async def _amoeba_error(_: Request, exc: AmoebaError) -> JSONResponse:
        text = str(exc)
        return JSONResponse(status_code=404 if "unknown" in text else 400, content={"detail": cap(text)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": clip_errors(exc.errors())})

    async def answer(make: Callable[[Snapshot], bytes]) -> Response:
        served.check()
        snap = served.snap
        try:
            body = make(snap)
        except AmoebaError as e:  # maybe pushed a moment ago to another worker: look once more
            if "unknown" not in str(e):
                raise
            await run_in_threadpool(served.rebuild)  # waits for a refresh already under way
            if served.snap is snap:
                raise
            body = make(served.snap)
        return Response(body, media_type="application/json")

    @app.get("/devices", response_model=DevicesOut)
    async def devices() -> Response:
        def make(s: Snapshot) -> bytes:
            hit = s.cache.get(("devices",))
            if hit is None:
                tables = s.index.tables()
                variants = {d: {f: list(_safe_variants(s.index, d, f)) for f in fl} for d, fl in tables.items()}
                hit = s.cache[("devices",)] = DevicesOut(model=s.index.model, devices=tables,
                                                         variants=variants).model_dump_json().encode()
            return hit

        return await answer(make)

    @app.get("/fronts/{device}/{flow}", response_model=FrontOut)
    async def front(device: str, flow: str, phase: Phase = "decode",
                    variant: Optional[str] = Query(None, max_length=200)) -> Response:
        def make(s: Snapshot) -> bytes:
            key = ("front", device, flow, phase, variant)
            hit = s.cache.get(key)
            if hit is None:
                ix = s.index.index(device, flow, phase, variant)
                from search.query import variant_note

                head = {"device": device, "flow": flow, "phase": phase, "n_evaluated": len(s.index.records),
                        "variant": ix.variant, "variants": list(ix.variants),
                        "variant_note": variant_note(ix.variant, ix.variants) if variant is None else None,
                        "weights": s.index.weights, "adapters": s.index.adapters}
                pts = ",".join(s.point_json(p) for p in ix.front())
                hit = (json.dumps(head)[:-1] + f',"front":[{pts}]}}').encode()
                if len(s.cache) < 10_000:
                    s.cache[key] = hit
            return hit

        return await answer(make)

    @app.get("/query", response_model=QueryOut)
    async def query(device: str = Query(..., max_length=200), flow: str = Query(..., max_length=200),
                    budget_ms: Optional[float] = Query(None, gt=0, allow_inf_nan=False,
                                                       description="Latency budget in ms"),
                    budget_share: Optional[float] = Query(None, gt=0, allow_inf_nan=False,
                                                          description="Or the budget as a share of the full model's "
                                                                      "latency on this table, e.g. 0.75 (answered "
                                                                      "with the resolved budget_ms)"),
                    phase: Phase = "decode", variant: Optional[str] = Query(None, max_length=200)) -> Response:
        if (budget_ms is None) == (budget_share is None):
            return JSONResponse(status_code=422, content={"detail": "give one of budget_ms (milliseconds) or "
                                                                    "budget_share (of the full model's latency)"})

        def body(s: Snapshot) -> bytes:
            ms = budget_ms if budget_share is None else s.index.share_budget(budget_share, device, flow, phase,
                                                                              variant)[0]
            return query_body(s, device, flow, ms, phase, variant)

        return await answer(body)

    @app.get("/runs", response_model=RunsOut)
    def runs() -> RunsOut:
        """The runs the database holds (pushed with `amoeba push --run`); one of them is served."""
        rows = [RunOut(**r, served=r["name"] == served.run) for r in store.run_summaries()]
        return RunsOut(served=served.run, runs=rows,
                       note="a server answers from one run; start another with `amoeba serve --run runs/NAME "
                            "--db <this database>` to answer from NAME")

    @app.post("/profiles", response_model=PushOut)
    def push_profile(p: ProfileIn) -> PushOut:
        """Merge a device's spec and latency tables (``amoeba push``); answers for it at once."""
        rep = store.merge_profile(p.device, p.spec, p.table_dicts())
        served.rebuild()
        return _push_out(rep, served, served.last_error is None)

    @app.post("/runs", response_model=PushOut)
    def push_run(r: RunIn) -> PushOut:
        """Merge a run's search.yaml and accuracy records (``amoeba push --run``)."""
        rep = store.merge_run(r.run, r.meta, [x.model_dump() for x in r.records])
        served.rebuild()
        return _push_out(rep, served, r.run == served.run and served.last_error is None)

    from search.web import mount_web

    mount_web(app, served)  # the page for people at / (search/web.py); `served` follows every refresh
    # The page's own HTML/JS/CSS hold no data (it asks for the token, then calls the JSON routes with it),
    # so a browser can load it; every data route and the OpenAPI pages still need the token.
    app.state.public_paths.update(PAGE_PATHS)
    return app


def query_body(s: Snapshot, device: str, flow: str, budget_ms: float, phase: str, variant: str | None) -> bytes:
    """The /query answer as JSON (the answered points' JSON is cached in the snapshot)."""
    a = s.index.best(device, flow, budget_ms, phase, variant)
    head = {"feasible": a.feasible, "device": a.device, "flow": a.flow, "phase": a.phase,
            "budget_ms": a.budget_ms, "message": a.message, "export_command": a.export_command,
            "variant": a.variant, "variants": list(a.variants), "variant_note": a.variant_note,
            "weights": a.weights, "adapters": a.adapters}
    shape = s.point_json(a.shape) if a.shape is not None else "null"
    return (json.dumps(head)[:-1] + f',"shape":{shape},"fastest":{s.point_json(a.fastest)}}}').encode()


_NUMBER = re.compile(r"^[+]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_QUERY_KEYS = {"device", "flow", "budget_ms", "phase", "variant"}


class QueryFastPath:
    """ASGI middleware: a well-formed ``GET /query`` that the current snapshot answers is answered here,
    without FastAPI's routing and validation (the hot path of a busy service). Anything else (a
    parameter missing, repeated, malformed or unknown, an unknown device) goes on to the FastAPI
    route, which stays the one place that words errors."""

    def __init__(self, app: Any, served: Served) -> None:
        self.app, self.served = app, served

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/query" and scope["method"] == "GET":
            body = self._answer(scope["query_string"])
            if body is not None:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _answer(self, qs: bytes) -> bytes | None:
        from urllib.parse import parse_qsl

        try:
            pairs = parse_qsl(qs.decode("latin-1"), keep_blank_values=True, strict_parsing=True, encoding="utf-8",
                              errors="strict")
        except (ValueError, UnicodeDecodeError):
            return None
        p = dict(pairs)
        if len(p) != len(pairs) or not {"device", "flow", "budget_ms"} <= p.keys() <= _QUERY_KEYS:
            return None
        phase, variant = p.get("phase", "decode"), p.get("variant")
        if phase not in ("decode", "prefill", "e2e") or any(len(v) > 200 for v in p.values()) \
                or not _NUMBER.match(p["budget_ms"]):
            return None
        budget = float(p["budget_ms"])
        if not (math.isfinite(budget) and budget > 0):
            return None
        self.served.check()
        try:
            return query_body(self.served.snap, p["device"], p["flow"], budget, phase, variant)
        except AmoebaError:
            return None


def _push_out(rep: Any, served: Served, ok: bool) -> PushOut:
    return PushOut(**rep.to_dict(), revision=served.snap.revision, served=ok)


def _safe_variants(index: QueryIndex, device: str, flow: str) -> tuple[str, ...]:
    try:
        return index.variants(device, flow)
    except AmoebaError:
        return ()


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --workers N`` (config in ``$AMOEBA_SERVE``, written by ``amoeba serve``)."""
    cfg = json.loads(os.environ["AMOEBA_SERVE"])
    return create_app(cfg["run"], Path(cfg["root"]) if cfg.get("root") else None, os.environ.get("AMOEBA_TOKEN"),
                      db=cfg["db"], seed_local=False, refresh_s=float(cfg.get("refresh_s", 0.5)))


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
