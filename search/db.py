"""The fleet's operations on the store: merging pushed device specs, latency tables and runs.

There is one database (:mod:`profiler.store`: the profiles root's SQLite file by default,
``postgresql://user@host/db`` when a team shares one server); the service, ``amoeba push``, query,
search and the plots read and write it directly. A push is validated (:mod:`search.fleet`, the
same :class:`~profiler.store.rows.LatencyRow` schema the profiler writes with) and merged by key:
a latency row's key is its table (device, flow, model) plus the row key
(:data:`profiler.store.KEY_COLUMNS`); an accuracy record's key is (run, fingerprint, shape key).
Inserts use ``INSERT ... ON CONFLICT DO NOTHING``, so pushing the same rows twice, or two clients
pushing overlapping rows at once, stores every row exactly once. A row pushed again with other
values keeps the stored one and is reported as a conflict. Every merge that changes something
bumps the store's revision in the same transaction; servers poll it to refresh their indexes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amoeba_core.errors import AmoebaError
from search.records import accuracy_values
from profiler.store import Store, dump as _json, first_line as _first_line, normalize_url, open_store, redact  # noqa: F401

log = logging.getLogger(__name__)


def default_url(root: Path | str | None = None) -> str:
    """The default store: the profiles root's (``$AMOEBA_STORE`` when set)."""
    from profiler.store import store_url

    return store_url(root)[0]


@dataclass
class MergeReport:
    inserted: int = 0
    present: int = 0  # same key, same values: nothing to do
    conflicts: list[str] = field(default_factory=list)  # same key, other values: the stored row is kept
    updated: list[str] = field(default_factory=list)  # device spec / table header changes

    def to_dict(self) -> dict[str, Any]:
        return {"inserted": self.inserted, "present": self.present, "conflicts": len(self.conflicts),
                "conflict_keys": self.conflicts[:20], "updated": self.updated}


def _same(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ("created",)) -> bool:
    def norm(x: Any) -> Any:
        if isinstance(x, float):
            return None if x != x else round(x, 9)
        if isinstance(x, list):
            return [norm(v) for v in x]
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        return x

    keys = (set(a) | set(b)) - set(ignore)
    return all(norm(a.get(k)) == norm(b.get(k)) for k in keys)


class FleetDB:
    """The fleet's merges and summaries over one :class:`~profiler.store.Store` (a URL, a folder or a store)."""

    def __init__(self, store: Store | str | Path | None = None) -> None:
        self.store = store if isinstance(store, Store) else open_store(store)
        self.url, self.sa = self.store.url, self.store.sa

    def revision(self) -> int:
        return self.store.revision()

    def dispose(self) -> None:
        self.store.dispose()

    # -- merges ---------------------------------------------------------------------------
    def merge_profile(self, device: str, spec: dict[str, Any], tables: list[dict[str, Any]],
                      key_columns: list[str] | None = None) -> MergeReport:
        """Merge one device's spec and tables (already validated: see :mod:`search.fleet`)."""
        from profiler.store import row_key_text

        st, sa, rep = self.store, self.sa, MergeReport()
        with st.begin() as c:
            changed = False
            old = c.execute(sa.select(st.devices.c.spec).where(st.devices.c.name == device).with_for_update()).first()
            if old is None:
                changed |= bool(st.insert_ignore(c, st.devices, [{"name": device, "spec": _json(spec)}], ("name",)))
            elif not _same(json.loads(old[0]), spec):
                c.execute(st.devices.update().where(st.devices.c.name == device).values(spec=_json(spec)))
                rep.updated.append(f"{device}/device.yaml")
                changed = True
            for t in sorted(tables, key=lambda t: (t["flow"], t["model"])):  # one lock order for every client
                flow, model, header, rows = t["flow"], t["model"], t["header"], t["rows"]
                old_h = st.header(device, flow, model, c)
                refs = header.get("references") or {}
                old_h.pop("references", None)
                merged = merge_headers(old_h, header, f"{device}/{flow}-{model}") if old_h else header
                if not old_h or not _same(merged, old_h, ignore=("updated", "references")):
                    st.put_header(c, device, flow, model, merged)
                    if old_h:
                        rep.updated.append(f"{device}/{flow}-{model}.yaml")
                    changed = True
                changed |= bool(st.add_blocks(c, device, flow, model, refs))
                by_key: dict[str, dict[str, Any]] = {}
                for r in rows:
                    by_key.setdefault(row_key_text(r), r)  # the same key twice in one push: the first one counts
                ins = st.insert_rows(c, device, flow, model, by_key.values())
                rep.inserted += len(ins)
                rest = [k for k in by_key if k not in ins]
                if rest:  # keys already stored: the same values (present) or other values (conflict)?
                    stored = st.stored_rows(c, device, flow, model, rest)
                    for k in rest:
                        if _same(stored[k], {**stored[k], **{f: by_key[k].get(f) for f in stored[k]}}):
                            rep.present += 1
                        else:
                            rep.conflicts.append(f"{flow}-{model} {k}")
                changed |= bool(ins)
            if changed:
                st.bump(c)
        return rep

    def merge_run(self, name: str, meta: dict[str, Any], records: list[dict[str, Any]]) -> MergeReport:
        st, sa, rep = self.store, self.sa, MergeReport()
        with st.begin() as c:
            changed = False
            old = c.execute(sa.select(st.runs.c.meta).where(st.runs.c.name == name).with_for_update()).first()
            if old is None:
                changed |= bool(st.insert_ignore(c, st.runs, [{"name": name, "meta": _json(meta)}], ("name",)))
            elif json.loads(old[0]).get("space", {}).get("model") != meta.get("space", {}).get("model"):
                raise AmoebaError(f"run {name!r} in the store is for model "
                                  f"{json.loads(old[0]).get('space', {}).get('model')!r}, the pushed one for "
                                  f"{meta.get('space', {}).get('model')!r}: push it under another --run name")
            elif not _same(json.loads(old[0]), meta):
                c.execute(st.runs.update().where(st.runs.c.name == name).values(meta=_json(meta)))
                rep.updated.append(f"{name}/search.yaml")
                changed = True
            values = accuracy_values(name, records)
            ins = len(st.insert_ignore(c, st.accuracy, values, ("run", "fingerprint", "key")))
            rep.inserted, rep.present = ins, len(values) - ins
            if ins or changed:
                st.bump(c)
        return rep

    # -- reading --------------------------------------------------------------------------
    def device_names(self) -> list[str]:
        return sorted(self.store.device_specs())

    def run_summaries(self) -> list[dict[str, Any]]:
        """Every stored run: name, model and how many accuracy records it holds."""
        st, sa = self.store, self.sa
        if not st.ready(write=False):
            return []
        with st.engine.connect() as c:
            counts = dict(c.execute(sa.select(st.accuracy.c.run, sa.func.count()).group_by(st.accuracy.c.run)).all())
            return [{"name": name, "model": (json.loads(meta).get("space") or {}).get("model"),
                     "records": int(counts.get(name, 0))}
                    for name, meta in c.execute(sa.select(st.runs.c.name, st.runs.c.meta).order_by(st.runs.c.name))]

    def count_rows(self, device: str | None = None) -> int:
        st = self.store
        if not st.ready(write=False):
            return 0
        q = self.sa.select(self.sa.func.count()).select_from(st.rows)
        if device is not None:
            q = q.where(st.rows.c.device == device)
        with st.engine.connect() as c:
            return int(c.execute(q).scalar_one())


def merge_headers(old: dict[str, Any], new: dict[str, Any], where: str) -> dict[str, Any]:
    """A table header after a push: variants and environments are united; geometries must agree."""
    if old.get("geometry") and new.get("geometry") and old["geometry"] != new["geometry"]:
        raise AmoebaError(f"{where}: the pushed table's geometry differs from the stored one")
    out = dict(old)
    for k, v in new.items():
        if k in ("variants", "environments", "created"):
            continue
        out.setdefault(k, v)
    out["variants"] = list(old.get("variants") or []) + [v for v in new.get("variants") or []
                                                          if v not in (old.get("variants") or [])]
    envs = dict(old.get("environments") or {})
    for k, v in (new.get("environments") or {}).items():
        envs.setdefault(k, v)
    out["environments"] = envs
    return out
