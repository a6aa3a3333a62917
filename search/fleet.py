"""Pushing a device's profile (or a run's accuracy table) to a shared service.

``amoeba push`` reads ``<root>/<device>/device.yaml`` and every ``<flow>-<model>`` table of that
device (header + rows with their provenance), and sends it as one :class:`ProfileIn` to a running
``amoeba serve`` (``POST /profiles``) or writes it straight into the shared database
(``--db``). Both paths validate the same way (pydantic):

* names are plain (letters, digits, ``._-``), the flow is a known flow, the spec is a valid
  device spec whose name is the pushed device;
* the model's geometry is known (a preset) or carried by the table header, and every depth fits it;
* every ``*_ms`` value is finite and positive, p10 <= p50 <= p90, widths in (0, 1];
* every row passes :class:`profiler.store.rows.LatencyRow`, the schema the store's table is built
  from (a ``measured`` row carries its timing samples, a computed one none, so it can never pass
  as measured); a roofline-only device (a spec sheet) has no measured or per-layer rows.

Rows then merge by key (:mod:`search.db`): pushing twice stores nothing new.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from amoeba_core.errors import AmoebaError
from profiler.store.rows import COMPOSED, MEASURED, LatencyRow
from search.query import clip

log = logging.getLogger(__name__)

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
MAX_ROWS = 200_000


class TableIn(BaseModel):
    flow: str = Field(max_length=64)
    model: str = Field(pattern=MODEL_NAME)
    header: dict[str, Any] = Field(default_factory=dict)
    rows: list[LatencyRow] = Field(max_length=MAX_ROWS)  # the store's one row schema

    @field_validator("flow")
    @classmethod
    def _known_flow(cls, v: str) -> str:
        from profiler.flows import FLOWS

        if v not in FLOWS:
            raise ValueError(f"unknown flow {clip(v, 30)}; known: {', '.join(sorted(FLOWS))}")
        return v

    @model_validator(mode="after")
    def _geometry(self) -> TableIn:
        from amoeba_core.shape import ModelGeometry

        g = self.header.get("geometry")
        try:
            geo = ModelGeometry(**g) if isinstance(g, dict) else ModelGeometry.preset(self.model)
        except (AmoebaError, TypeError, ValueError, KeyError) as e:
            how = "its header's geometry is invalid" if isinstance(g, dict) else \
                "it is not a known geometry preset and the table header carries no geometry"
            raise ValueError(f"model {clip(self.model, 40)}: {how} ({str(e).splitlines()[0][:120]})") from None
        for i, r in enumerate(self.rows):
            if r.depth > geo.n_layers:
                raise ValueError(f"row {i}: depth {r.depth} > {geo.n_layers} layers of {self.model}")
        self.header = {**self.header, "flow": self.flow, "model": self.model,
                       "variants": list(dict.fromkeys([*(self.header.get("variants") or []),
                                                       *sorted({r.variant for r in self.rows})]))}
        return self


class ProfileIn(BaseModel):
    """``POST /profiles``: a device spec and its tables."""

    device: str = Field(pattern=NAME)
    spec: dict[str, Any]
    tables: list[TableIn] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _spec(self) -> ProfileIn:
        from profiler.device import DeviceSpec

        if str(self.spec.get("name", self.device)) != self.device:
            raise ValueError(f"spec name {clip(self.spec.get('name'), 40)} is not the pushed device {self.device!r}")
        try:
            spec = DeviceSpec.from_dict({**self.spec, "name": self.device}, f"device {self.device}")
        except AmoebaError as e:
            raise ValueError(str(e)[:300]) from None
        if not spec.memory_bandwidth_gbs > 0 or not all(math.isfinite(v) and v > 0 for v in spec.peak_flops.values()):
            raise ValueError("device spec: memory_bandwidth_gbs and peak_flops must be positive")
        self.spec = {**self.spec, "name": self.device}
        seen: set[tuple[str, str]] = set()
        for t in self.tables:
            if (t.flow, t.model) in seen:
                raise ValueError(f"table {t.flow}-{t.model} appears twice")
            seen.add((t.flow, t.model))
            if spec.roofline_only:
                bad = [r for r in t.rows if r.source in MEASURED + COMPOSED]
                if bad:
                    raise ValueError(f"{self.device} is roofline-only (a spec sheet): its table {t.flow}-{t.model} "
                                     f"cannot hold {bad[0].source} rows")
            t.header = {**t.header, "device": self.device}
        return self

    def table_dicts(self) -> list[dict[str, Any]]:
        return [{"flow": t.flow, "model": t.model, "header": t.header,
                 "rows": [{**r.model_dump(), "device": self.device, "flow": t.flow, "model": t.model}
                          for r in t.rows]} for t in self.tables]


class RecordIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    fingerprint: str = Field(min_length=1, max_length=500)
    key: str = Field(min_length=1, max_length=500)
    depth: int = Field(ge=1)
    width: float = Field(gt=0, le=1, allow_inf_nan=False)
    top1_acc: float = Field(ge=0, le=1, allow_inf_nan=False)
    ppl: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    kind: Literal["strategy", "baseline"] = "strategy"


class RunIn(BaseModel):
    """``POST /runs``: a run's search.yaml and accuracy records (shared by every device)."""

    run: str = Field(pattern=NAME)
    meta: dict[str, Any]
    records: list[RecordIn] = Field(max_length=MAX_ROWS)

    @model_validator(mode="after")
    def _space(self) -> RunIn:
        from search.space import SearchSpace

        try:
            SearchSpace.from_dict(self.meta["space"])
        except Exception as e:  # noqa: BLE001 - any malformed space
            raise ValueError(f"meta.space is not a search space: {str(e).splitlines()[0][:200] if str(e) else e!r}") \
                from None
        return self


def validate(model: type[BaseModel], payload: Any) -> Any:
    """Pydantic validation with a one-line :class:`AmoebaError` (direct database pushes)."""
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise AmoebaError(f"rejected: {summarize(e.errors())}") from None


def summarize(errors: list[dict[str, Any]], n: int = 3) -> str:
    parts = []
    for e in errors[:n]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {str(e.get('msg', ''))[:300]}" if loc else str(e.get("msg", ""))[:300])
    more = f" (+{len(errors) - n} more)" if len(errors) > n else ""
    return "; ".join(parts) + more


# -- reading local files (the client side) ----------------------------------------------------
def profile_payload(device: str, root: Path | None = None, as_name: str | None = None) -> dict[str, Any]:
    """``device``'s spec and tables under ``root``, renamed ``as_name`` when given."""
    import yaml

    from profiler.device import DEVICE_FILE, profiles_root
    from profiler.lookup import list_tables
    from profiler.table import LatencyTable

    base = profiles_root(root)
    spec_path = base / device / DEVICE_FILE
    if not spec_path.is_file():
        from profiler.device import list_devices

        raise AmoebaError(f"unknown device {clip(device, 64)} under {base}; known: "
                          f"{', '.join(list_devices(base)) or '(none)'}")
    spec = yaml.safe_load(spec_path.read_text())
    name = as_name or device
    tables = []
    for t in list_tables(base):
        if t.device != device:
            continue
        lt = LatencyTable(device, t.flow, t.model, base)
        rows = json.loads(lt.df.to_json(orient="records")) if len(lt.df) else []
        for r in rows:
            r.pop("device", None)
            r.pop("flow", None)
            r.pop("model", None)
        header = {k: v for k, v in lt.header.items() if k not in ("device",)}
        tables.append({"flow": t.flow, "model": t.model, "header": json.loads(json.dumps(header, default=str)),
                       "rows": rows})
    return {"device": name, "spec": {**json.loads(json.dumps(spec, default=str)), "name": name}, "tables": tables}


def run_payload(run_dir: Path, name: str | None = None) -> dict[str, Any]:
    """A run's search.yaml and accuracy records (``amoeba push --run``)."""
    from search.query import read_meta
    from search.records import AccuracyTable, record_dict

    meta = read_meta(run_dir)
    recs = [record_dict(r) for r in AccuracyTable(run_dir, url=meta.get("accuracy_store")).records()]
    return {"run": name or run_dir.resolve().name, "meta": json.loads(json.dumps(meta, default=str)),
            "records": json.loads(json.dumps(recs, default=str))}


def post(server: str, path: str, payload: dict[str, Any], token: str | None, timeout: float = 120) -> dict[str, Any]:
    """POST JSON with the standard library; a refused push becomes a one-line :class:`AmoebaError`."""
    import urllib.error
    import urllib.request

    if not re.match(r"^https?://", server):
        raise AmoebaError(f"--server must be an http(s) URL, got {clip(server, 80)}")
    req = urllib.request.Request(server.rstrip("/") + path, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            detail = json.loads(body).get("detail", body)
        except (ValueError, AttributeError):
            detail = body
        raise AmoebaError(f"{server} refused the push ({e.code}): {str(detail)[:500]}") from None
    except (urllib.error.URLError, OSError) as e:
        raise AmoebaError(f"cannot reach {server}: {getattr(e, 'reason', e)}") from None


def push_profile(payload: dict[str, Any], server: str | None = None, token: str | None = None,
                 db: str | None = None) -> dict[str, Any]:
    """Send one profile to a server (``POST /profiles``) or merge it straight into a database."""
    if server:
        return post(server, "/profiles", payload, token)
    from profiler.table import KEY_COLUMNS
    from search.db import FleetDB

    p = validate(ProfileIn, payload)
    store = FleetDB(db) if isinstance(db, str) else db
    return store.merge_profile(p.device, p.spec, p.table_dicts(), list(KEY_COLUMNS)).to_dict()


def push_run(payload: dict[str, Any], server: str | None = None, token: str | None = None,
             db: Any = None) -> dict[str, Any]:
    if server:
        return post(server, "/runs", payload, token)
    from search.db import FleetDB

    r = validate(RunIn, payload)
    store = FleetDB(db) if isinstance(db, str) else db
    return store.merge_run(r.run, r.meta, [x.model_dump() for x in r.records]).to_dict()
