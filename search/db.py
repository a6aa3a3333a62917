"""The service's database: device specs, latency rows, run metadata and accuracy records.

One SQLAlchemy URL holds everything a fleet shares: ``sqlite:///<run>/service.db`` by default
(embedded, one machine), ``postgresql://user@host/db`` when a team shares one server (the Optuna
studies of ``amoeba search --storage`` can live in the same database; these tables are prefixed
``amoeba_`` so they never clash with Optuna's).

Rows are merged by key: a latency row's key is its table (device, flow, model) plus the
profiler's row key (:data:`profiler.table.KEY_COLUMNS`); an accuracy record's key is (run,
fingerprint, shape key). Inserts use ``INSERT ... ON CONFLICT DO NOTHING``, so pushing the same
rows twice, or two clients pushing overlapping rows at once, stores every row exactly once. A
row pushed again with other values keeps the stored one and is reported as a conflict. Every
merge that changes something bumps one revision counter in the same transaction; servers poll
it to refresh their indexes.

:meth:`FleetDB.materialize` writes the database's content as a profiles root and a run folder
(the files the profiler and :class:`search.query.QueryIndex` read), so the service answers from
pushed data through exactly the code paths used for local files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from amoeba_core.errors import AmoebaError

log = logging.getLogger(__name__)

PREFIX = "amoeba_"


def normalize_url(url: str) -> str:
    """``postgresql://`` -> the installed driver (psycopg 3 or psycopg2); other URLs unchanged."""
    if url.startswith(("postgresql://", "postgres://")):
        from importlib.util import find_spec

        rest = url.split("://", 1)[1]
        for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            if find_spec(module) is not None:
                return f"postgresql+{driver}://{rest}"
        raise AmoebaError("a postgresql:// database needs a driver: pip install 'amoeba-deploy[fleet]' (psycopg)")
    return url


def default_url(run_dir: Path | str) -> str:
    return f"sqlite:///{(Path(run_dir) / 'service.db').resolve()}"


def redact(url: str) -> str:
    """The URL without its password (for messages)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


@dataclass
class MergeReport:
    inserted: int = 0
    present: int = 0  # same key, same values: nothing to do
    conflicts: list[str] = field(default_factory=list)  # same key, other values: the stored row is kept
    updated: list[str] = field(default_factory=list)  # device spec / table header changes

    def to_dict(self) -> dict[str, Any]:
        return {"inserted": self.inserted, "present": self.present, "conflicts": len(self.conflicts),
                "conflict_keys": self.conflicts[:20], "updated": self.updated}


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def row_key_text(row: dict[str, Any], key_columns: Iterable[str]) -> str:
    """Canonical text of a latency row's key (width rounded like the profiler's table)."""
    out = {}
    for c in key_columns:
        v = row.get(c)
        if c == "width" and v is not None:
            v = round(float(v), 3)
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        out[c] = v
    return _json(out)


def _same(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ("created",)) -> bool:
    def norm(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 9)
        if isinstance(x, list):
            return [norm(v) for v in x]
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        return x

    keys = (set(a) | set(b)) - set(ignore)
    return all(norm(a.get(k)) == norm(b.get(k)) for k in keys)


class FleetDB:
    """The shared tables behind ``amoeba serve`` (SQLite or PostgreSQL through SQLAlchemy Core)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url
        real = normalize_url(url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if real.startswith("sqlite:"):
            db = real.split(":///", 1)[-1]
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60}
        try:
            self.engine = sa.create_engine(real, **kwargs)
        except Exception as e:  # noqa: BLE001 - bad URL, missing driver
            raise AmoebaError(f"cannot open database {redact(url)}: {_first_line(e)}") from None
        self.sa = sa
        md = sa.MetaData()
        S = sa.String
        self.devices = sa.Table(f"{PREFIX}devices", md, sa.Column("name", S(64), primary_key=True),
                                sa.Column("spec", sa.Text, nullable=False), sa.Column("updated", S(40)))
        self.tables = sa.Table(f"{PREFIX}tables", md, sa.Column("device", S(64), primary_key=True),
                               sa.Column("flow", S(64), primary_key=True), sa.Column("model", S(200), primary_key=True),
                               sa.Column("header", sa.Text, nullable=False))
        self.rows = sa.Table(f"{PREFIX}latency_rows", md, sa.Column("id", sa.Integer, primary_key=True),
                             sa.Column("device", S(64), nullable=False), sa.Column("flow", S(64), nullable=False),
                             sa.Column("model", S(200), nullable=False), sa.Column("row_key", S(1000), nullable=False),
                             sa.Column("row", sa.Text, nullable=False),
                             sa.UniqueConstraint("device", "flow", "model", "row_key", name=f"{PREFIX}row_uq"))
        self.runs = sa.Table(f"{PREFIX}runs", md, sa.Column("name", S(200), primary_key=True),
                             sa.Column("meta", sa.Text, nullable=False))
        self.accuracy = sa.Table(f"{PREFIX}accuracy", md, sa.Column("run", S(200), primary_key=True),
                                 sa.Column("fingerprint", S(500), primary_key=True),
                                 sa.Column("key", S(500), primary_key=True), sa.Column("record", sa.Text, nullable=False))
        self.revision_t = sa.Table(f"{PREFIX}revision", md, sa.Column("id", sa.Integer, primary_key=True),
                                   sa.Column("rev", sa.Integer, nullable=False))
        self._create(md)

    def _create(self, md: Any) -> None:
        for attempt in range(6):
            try:
                md.create_all(self.engine)
                with self.engine.begin() as c:
                    if c.execute(self.sa.select(self.revision_t.c.rev)).first() is None:
                        self._insert_ignore(c, self.revision_t, [{"id": 1, "rev": 0}], ("id",))
                return
            except Exception as e:  # noqa: BLE001 - two processes creating the schema at once
                text = _first_line(e)
                racing = "already exists" in text or "duplicate key" in text or "UNIQUE constraint" in text \
                    or "database is locked" in text
                if not racing or attempt == 5:
                    raise AmoebaError(f"cannot open database {redact(self.url)}: {text}") from None
                import time

                time.sleep(0.2 * (attempt + 1))

    # -- primitives -----------------------------------------------------------------------
    def _insert_ignore(self, conn: Any, table: Any, values: list[dict[str, Any]],
                       index: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Insert rows, skipping keys already present; returns the keys (``index`` columns) inserted."""
        if not values:
            return []
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover
            raise AmoebaError(f"database backend {conn.dialect.name} is not supported (sqlite, postgresql)")
        stmt = insert(table).on_conflict_do_nothing(index_elements=list(index)).returning(
            *[table.c[k] for k in index])
        out: list[tuple[Any, ...]] = []
        for v in values:  # one statement per row: RETURNING with executemany is not portable
            out += [tuple(r) for r in conn.execute(stmt, v).fetchall()]
        return out

    def _bump(self, conn: Any) -> None:
        conn.execute(self.revision_t.update().where(self.revision_t.c.id == 1)
                     .values(rev=self.revision_t.c.rev + 1))

    def revision(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(self.sa.select(self.revision_t.c.rev)).scalar_one())

    # -- merges ---------------------------------------------------------------------------
    def merge_profile(self, device: str, spec: dict[str, Any], tables: list[dict[str, Any]],
                      key_columns: list[str]) -> MergeReport:
        """Merge one device's spec and tables (already validated: see :mod:`search.fleet`)."""
        sa, rep = self.sa, MergeReport()
        with self.engine.begin() as c:
            changed = False
            old = c.execute(sa.select(self.devices.c.spec).where(self.devices.c.name == device)
                            .with_for_update()).first()
            if old is None:
                changed |= bool(self._insert_ignore(c, self.devices, [{"name": device, "spec": _json(spec)}],
                                                    ("name",)))
            elif not _same(json.loads(old[0]), spec):
                c.execute(self.devices.update().where(self.devices.c.name == device).values(spec=_json(spec)))
                rep.updated.append(f"{device}/device.yaml")
                changed = True
            for t in sorted(tables, key=lambda t: (t["flow"], t["model"])):  # one lock order for every client
                flow, model, header, rows = t["flow"], t["model"], t["header"], t["rows"]
                where = (self.tables.c.device == device) & (self.tables.c.flow == flow) & (self.tables.c.model == model)
                old = c.execute(sa.select(self.tables.c.header).where(where).with_for_update()).first()
                if old is None:
                    ins = self._insert_ignore(c, self.tables, [{"device": device, "flow": flow, "model": model,
                                                                "header": _json(header)}], ("device", "flow", "model"))
                    if not ins:  # another client created it between our select and insert: merge into theirs
                        old = c.execute(sa.select(self.tables.c.header).where(where).with_for_update()).first()
                    changed |= bool(ins)
                if old is not None:
                    merged = merge_headers(json.loads(old[0]), header, f"{device}/{flow}-{model}")
                    if not _same(merged, json.loads(old[0]), ignore=("updated",)):
                        c.execute(self.tables.update().where(where).values(header=_json(merged)))
                        rep.updated.append(f"{device}/{flow}-{model}.yaml")
                        changed = True
                values, by_key = [], {}
                for r in rows:
                    k = row_key_text(r, key_columns)
                    if k in by_key:  # the same key twice in one push: the first one counts
                        continue
                    by_key[k] = r
                    values.append({"device": device, "flow": flow, "model": model, "row_key": k, "row": _json(r)})
                values.sort(key=lambda v: v["row_key"])  # one lock order: concurrent pushes cannot deadlock
                ins = {k[3] for k in self._insert_ignore(c, self.rows, values, ("device", "flow", "model", "row_key"))}
                rep.inserted += len(ins)
                rest = [k for k in by_key if k not in ins]
                if rest:  # keys already stored: the same values (present) or other values (conflict)?
                    stored = c.execute(sa.select(self.rows.c.row_key, self.rows.c.row).where(
                        (self.rows.c.device == device) & (self.rows.c.flow == flow) & (self.rows.c.model == model)
                        & self.rows.c.row_key.in_(rest))).all()
                    for k, text in stored:
                        if _same(json.loads(text), json.loads(_json(by_key[k]))):
                            rep.present += 1
                        else:
                            rep.conflicts.append(f"{flow}-{model} {k}")
                changed |= bool(ins)
            if changed:
                self._bump(c)
        return rep

    def merge_run(self, name: str, meta: dict[str, Any], records: list[dict[str, Any]]) -> MergeReport:
        sa, rep = self.sa, MergeReport()
        with self.engine.begin() as c:
            changed = False
            old = c.execute(sa.select(self.runs.c.meta).where(self.runs.c.name == name).with_for_update()).first()
            if old is None:
                changed |= bool(self._insert_ignore(c, self.runs, [{"name": name, "meta": _json(meta)}], ("name",)))
            elif json.loads(old[0]).get("space", {}).get("model") != meta.get("space", {}).get("model"):
                raise AmoebaError(f"run {name!r} on the server is for model "
                                  f"{json.loads(old[0]).get('space', {}).get('model')!r}, the pushed one for "
                                  f"{meta.get('space', {}).get('model')!r}: push it under another --run name")
            elif not _same(json.loads(old[0]), meta):
                c.execute(self.runs.update().where(self.runs.c.name == name).values(meta=_json(meta)))
                rep.updated.append(f"{name}/search.yaml")
                changed = True
            values = [{"run": name, "fingerprint": r["fingerprint"], "key": r["key"], "record": _json(r)}
                      for r in records]
            ins = len(self._insert_ignore(c, self.accuracy, values, ("run", "fingerprint", "key")))
            rep.inserted, rep.present = ins, len(values) - ins
            if ins:
                changed = True
            if changed:
                self._bump(c)
        return rep

    # -- reading --------------------------------------------------------------------------
    def device_names(self) -> list[str]:
        with self.engine.connect() as c:
            return sorted(r[0] for r in c.execute(self.sa.select(self.devices.c.name)))

    def run_summaries(self) -> list[dict[str, Any]]:
        """Every stored run: name, model and how many accuracy records it holds."""
        sa = self.sa
        with self.engine.connect() as c:
            counts = dict(c.execute(sa.select(self.accuracy.c.run, sa.func.count()).group_by(self.accuracy.c.run)).all())
            return [{"name": name, "model": (json.loads(meta).get("space") or {}).get("model"),
                     "records": int(counts.get(name, 0))}
                    for name, meta in c.execute(sa.select(self.runs.c.name, self.runs.c.meta).order_by(self.runs.c.name))]

    def count_rows(self, device: str | None = None) -> int:
        q = self.sa.select(self.sa.func.count()).select_from(self.rows)
        if device is not None:
            q = q.where(self.rows.c.device == device)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def latency_rows(self, device: str, flow: str, model: str) -> list[dict[str, Any]]:
        r = self.rows.c
        with self.engine.connect() as c:
            res = c.execute(self.sa.select(r.row).where((r.device == device) & (r.flow == flow) & (r.model == model))
                            .order_by(r.id))
            return [json.loads(t) for (t,) in res]

    def materialize(self, profiles: Path, runs: Path) -> int:
        """Write every device, table and run as files under ``profiles`` and ``runs``; returns the revision."""
        import pandas as pd

        with self.engine.connect() as c:
            rev = int(c.execute(self.sa.select(self.revision_t.c.rev)).scalar_one())
            for name, spec in c.execute(self.sa.select(self.devices.c.name, self.devices.c.spec)):
                (profiles / name).mkdir(parents=True, exist_ok=True)
                (profiles / name / "device.yaml").write_text(yaml.safe_dump(json.loads(spec), sort_keys=False))
            rows_by_table: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
            for d, f, m, text in c.execute(self.sa.select(self.rows.c.device, self.rows.c.flow, self.rows.c.model,
                                                          self.rows.c.row).order_by(self.rows.c.id)):
                rows_by_table.setdefault((d, f, m), []).append(json.loads(text))
            for d, f, m, header in c.execute(self.sa.select(self.tables.c.device, self.tables.c.flow,
                                                            self.tables.c.model, self.tables.c.header)):
                if not (profiles / d / "device.yaml").is_file():
                    continue
                base = profiles / d / f"{f}-{m}"
                base.with_suffix(".yaml").write_text(yaml.safe_dump(json.loads(header), sort_keys=False))
                rows = rows_by_table.get((d, f, m), [])
                if rows:
                    df = pd.DataFrame(rows)
                    if "samples_ms" in df:
                        df["samples_ms"] = df["samples_ms"].map(lambda x: [float(v) for v in (x or [])])
                    df.to_parquet(base.with_suffix(".parquet"), index=False)
            for name, meta in c.execute(self.sa.select(self.runs.c.name, self.runs.c.meta)):
                folder = runs / name
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "search.yaml").write_text(yaml.safe_dump(json.loads(meta), sort_keys=False))
                recs = [json.loads(t) for (t,) in c.execute(self.sa.select(self.accuracy.c.record)
                                                            .where(self.accuracy.c.run == name))]
                if recs:
                    pd.DataFrame(recs).to_parquet(folder / "accuracy.parquet", index=False)
        return rev

    def dispose(self) -> None:
        self.engine.dispose()


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__

