"""The store: one SQL database for latency tables, reference levels, device specs, runs and accuracy.

``open_store(None | folder | file | URL)``:

* ``None`` -> the profiles root's embedded SQLite file, ``<root>/amoeba.db`` (root: ``$AMOEBA_PROFILES``,
  else ``./device_profiles``); a folder -> ``<folder>/amoeba.db``; a ``.db`` file -> that file;
* ``sqlite:///...`` or ``postgresql://user@host/db`` -> that database (a team's shared server; the Optuna
  studies of ``amoeba search --storage`` can live in it too: these tables are prefixed ``amoeba_``).
  ``$AMOEBA_STORE`` set to such a URL takes the place of a folder's file for every command, so a
  team profiles, searches and serves from one server while device specs stay in the folder.

Latency rows are typed columns (:data:`profiler.store.rows.SQL_COLUMNS`, from the pydantic
:class:`~profiler.store.rows.LatencyRow` a push is validated with), unique per table and row key
(:func:`row_key_text`), so appending a row twice, or two processes appending at once, stores it once:
``INSERT ... ON CONFLICT DO NOTHING`` in a transaction replaces the old lock-rewrite-rename cycle, and
a SIGKILL at any instant leaves every committed row. Reference-level blocks are rows of their own
(one per timed block). Every change bumps one revision counter in the same transaction; the
service polls it to refresh its indexes.

Reads of a SQLite file that does not exist return nothing and create nothing. A folder root that
still holds tables of the earlier file format (``<device>/<flow>-<model>.parquet`` + ``.yaml``) is
imported on first open (:mod:`profiler.store.legacy`); the files stay where they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from amoeba_core.errors import AmoebaError
from profiler.store.rows import SQL_COLUMNS, LatencyRow  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PREFIX = "amoeba_"
FILE = "amoeba.db"
KEY_COLUMNS = ["variant", "depth", "width", "phase", "batch", "prompt_len", "source", "threads", "protocol",
               "attn_width"]
_STORES: dict[str, Store] = {}
_OPEN_LOCK = threading.Lock()


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


def redact(url: str) -> str:
    """The URL without its password (for messages)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


def store_url(target: Path | str | None = None) -> tuple[str, Path | None]:
    """The URL of ``target`` (module docstring) and the folder whose legacy files it imports (or None)."""
    from profiler.device import profiles_root

    if isinstance(target, str) and "://" in target:
        return target, None
    path = Path(target) if target is not None else profiles_root()
    if path.suffix == ".db":
        return f"sqlite:///{path.resolve()}", None
    shared = os.environ.get("AMOEBA_STORE")  # a team's database in place of the folder's file
    return (shared if shared else f"sqlite:///{(path / FILE).resolve()}"), path


def _forget_after_fork() -> None:
    """A forked child must not use its parent's pooled connections: it opens its own."""
    for store in _STORES.values():
        store.engine.dispose(close=False)
    _STORES.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def open_store(target: Path | str | None = None) -> Store:
    """The store of ``target`` (one engine per database and process)."""
    url, folder = store_url(target)
    with _OPEN_LOCK:
        store = _STORES.get(url)
        if store is None:
            store = _STORES[url] = Store(url)
    if folder is not None:
        from profiler.store.legacy import import_folder

        import_folder(store, folder)
    return store


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def row_key_text(row: dict[str, Any]) -> str:
    """Canonical text of a latency row's key (width rounded like the table; NaN attention width = None)."""
    out = {}
    for c in KEY_COLUMNS:
        v = row.get(c)
        if isinstance(v, float) and math.isnan(v):
            v = None
        if c in ("width", "attn_width") and v is not None:
            v = round(float(v), 3)
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        out[c] = v
    return dump(out)


class Store:
    """One database (SQLite or PostgreSQL through SQLAlchemy Core); see the module docstring."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url, self.sa = url, sa
        real = normalize_url(url)
        self.file: Path | None = None
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if real.startswith("sqlite:"):
            db = real.split(":///", 1)[-1]
            self.file = Path(db) if db and db != ":memory:" else None
            kwargs["connect_args"] = {"timeout": 60}
        try:
            self.engine = sa.create_engine(real, **kwargs)
        except Exception as e:  # noqa: BLE001 - bad URL, missing driver
            raise AmoebaError(f"cannot open store {redact(url)}: {first_line(e)}") from None
        self._ready = False
        md = sa.MetaData()
        S, F, I, T = sa.String, sa.Float, sa.Integer, sa.Text
        types = {"int": I, "float": F, "str": T, "json": T}
        def where() -> list[Any]:  # the columns naming a table (fresh Column objects per SQL table)
            return [sa.Column("device", S(64), nullable=False), sa.Column("flow", S(64), nullable=False),
                    sa.Column("model", S(200), nullable=False)]

        self.devices = sa.Table(f"{PREFIX}devices", md, sa.Column("name", S(64), primary_key=True),
                                sa.Column("spec", T, nullable=False))
        self.tables = sa.Table(f"{PREFIX}tables", md, *[sa.Column(c.name, c.type, primary_key=True) for c in where()],
                               sa.Column("header", T, nullable=False))
        self.rows = sa.Table(f"{PREFIX}latency", md, sa.Column("id", I, primary_key=True),
                             *where(), sa.Column("row_key", S(1000), nullable=False),
                             *[sa.Column(c, types[t]) for c, t in SQL_COLUMNS.items()],
                             sa.UniqueConstraint("device", "flow", "model", "row_key", name=f"{PREFIX}latency_uq"))
        self.blocks = sa.Table(f"{PREFIX}reference_blocks", md, sa.Column("id", I, primary_key=True),
                               *where(), sa.Column("level_key", S(300), nullable=False),
                               sa.Column("variant", T), sa.Column("phase", T), sa.Column("prompt_len", I),
                               sa.Column("batch", I), sa.Column("threads", I), sa.Column("reference", T),
                               sa.Column("p50_ms", F), sa.Column("p10_ms", F), sa.Column("p90_ms", F),
                               sa.Column("n", I), sa.Column("created", S(40)), sa.Column("quantiles_ms", T),
                               sa.UniqueConstraint("device", "flow", "model", "level_key", "created", "p50_ms",
                                                   name=f"{PREFIX}block_uq"))
        self.runs = sa.Table(f"{PREFIX}runs", md, sa.Column("name", S(200), primary_key=True),
                             sa.Column("meta", T, nullable=False))
        self.accuracy = sa.Table(f"{PREFIX}accuracy", md, sa.Column("run", S(200), primary_key=True),
                                 sa.Column("fingerprint", S(500), primary_key=True),
                                 sa.Column("key", S(500), primary_key=True), sa.Column("depth", I),
                                 sa.Column("width", F), sa.Column("top1_acc", F), sa.Column("ppl", F),
                                 sa.Column("kind", S(20)), sa.Column("record", T, nullable=False))
        self.imports = sa.Table(f"{PREFIX}imports", md, sa.Column("path", S(1000), primary_key=True),
                                sa.Column("stamp", S(100), nullable=False))
        self.revision_t = sa.Table(f"{PREFIX}revision", md, sa.Column("id", I, primary_key=True),
                                   sa.Column("rev", I, nullable=False))
        self.md = md

    def __repr__(self) -> str:
        return f"Store({redact(self.url)})"

    # -- schema -----------------------------------------------------------------------------
    def ready(self, write: bool) -> bool:
        """Create the schema when writing (or when the database exists); False: a missing SQLite file, read."""
        if self._ready:
            return True
        if not write and self.file is not None and not self.file.exists():
            return False
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(8):
            try:
                self.md.create_all(self.engine)
                with self.engine.begin() as c:
                    if c.execute(self.sa.select(self.revision_t.c.rev)).first() is None:
                        self.insert_ignore(c, self.revision_t, [{"id": 1, "rev": 0}], ("id",))
                self._ready = True
                return True
            except Exception as e:  # noqa: BLE001 - two processes creating the schema at once
                text = first_line(e)
                racing = any(s in text for s in ("already exists", "duplicate key", "UNIQUE constraint", "locked"))
                if not racing or attempt == 7:
                    raise AmoebaError(f"cannot open store {redact(self.url)}: {text}") from None
                time.sleep(0.2 * (attempt + 1))
        return False  # pragma: no cover

    def begin(self) -> Any:
        """A write transaction (the schema created first)."""
        self.ready(write=True)
        return self.engine.begin()

    def insert_ignore(self, conn: Any, table: Any, values: list[dict[str, Any]],
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

    def bump(self, conn: Any) -> None:
        conn.execute(self.revision_t.update().where(self.revision_t.c.id == 1).values(rev=self.revision_t.c.rev + 1))

    def revision(self) -> int:
        if not self.ready(write=False):
            return 0
        with self.engine.connect() as c:
            return int(c.execute(self.sa.select(self.revision_t.c.rev)).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()

    # -- device specs and runs (pushed by the fleet) -----------------------------------------------
    def device_specs(self) -> dict[str, dict[str, Any]]:
        if not self.ready(write=False):
            return {}
        with self.engine.connect() as c:
            return {n: json.loads(t) for n, t in c.execute(self.sa.select(self.devices.c.name, self.devices.c.spec))}

    def run_meta(self, name: str) -> dict[str, Any] | None:
        if not self.ready(write=False):
            return None
        with self.engine.connect() as c:
            got = c.execute(self.sa.select(self.runs.c.meta).where(self.runs.c.name == name)).first()
        return None if got is None else json.loads(got[0])

    def run_records(self, name: str) -> list[dict[str, Any]]:
        if not self.ready(write=False):
            return []
        a = self.accuracy.c
        with self.engine.connect() as c:
            return [json.loads(t) for (t,) in c.execute(self.sa.select(a.record).where(a.run == name)
                                                        .order_by(a.fingerprint, a.key))]

    # -- latency tables ----------------------------------------------------------------------
    def _where(self, t: Any, device: str, flow: str, model: str) -> Any:
        return (t.c.device == device) & (t.c.flow == flow) & (t.c.model == model)

    def list_tables(self) -> list[tuple[str, str, str]]:
        """Every (device, flow, model) with rows."""
        if not self.ready(write=False):
            return []
        r = self.rows.c
        with self.engine.connect() as c:
            return [tuple(x) for x in c.execute(self.sa.select(r.device, r.flow, r.model).distinct()
                                                .order_by(r.device, r.flow, r.model))]

    def latency_rows(self, device: str, flow: str, model: str) -> list[dict[str, Any]]:
        """The rows of one table, in insertion order, as dicts of :data:`SQL_COLUMNS` (samples parsed)."""
        if not self.ready(write=False):
            return []
        cols = [self.rows.c[k] for k in SQL_COLUMNS]
        with self.engine.connect() as c:
            res = c.execute(self.sa.select(*cols).where(self._where(self.rows, device, flow, model))
                            .order_by(self.rows.c.id)).all()
        out = []
        for r in res:
            d = dict(zip(SQL_COLUMNS, r))
            d["samples_ms"] = json.loads(d["samples_ms"] or "[]")
            out.append(d)
        return out

    def _row_values(self, device: str, flow: str, model: str, row: dict[str, Any]) -> dict[str, Any]:
        v = {k: row.get(k) for k in SQL_COLUMNS}
        for k, t in SQL_COLUMNS.items():
            x = v[k]
            if t == "float" and x is not None and math.isnan(float(x)):
                v[k] = None
        v["samples_ms"] = dump([float(x) for x in (row.get("samples_ms") or [])])
        return {"device": device, "flow": flow, "model": model, "row_key": row_key_text(row), **v}

    def insert_rows(self, conn: Any, device: str, flow: str, model: str,
                    rows: Iterable[dict[str, Any]]) -> set[str]:
        """Insert rows (first of each key wins), skipping keys present; returns the keys inserted."""
        values: dict[str, dict[str, Any]] = {}
        for r in rows:
            v = self._row_values(device, flow, model, r)
            values.setdefault(v["row_key"], v)
        ordered = [values[k] for k in sorted(values)]  # one lock order: concurrent writers cannot deadlock
        return {k[3] for k in self.insert_ignore(conn, self.rows, ordered, ("device", "flow", "model", "row_key"))}

    def stored_rows(self, conn: Any, device: str, flow: str, model: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        cols = [self.rows.c.row_key, *[self.rows.c[k] for k in SQL_COLUMNS]]
        res = conn.execute(self.sa.select(*cols).where(self._where(self.rows, device, flow, model)
                                                       & self.rows.c.row_key.in_(keys))).all()
        out = {}
        for r in res:
            d = dict(zip(SQL_COLUMNS, r[1:]))
            d["samples_ms"] = json.loads(d["samples_ms"] or "[]")
            out[r[0]] = d
        return out

    def replace_row(self, device: str, flow: str, model: str, row: dict[str, Any]) -> None:
        v = self._row_values(device, flow, model, row)
        with self.begin() as c:
            c.execute(self.rows.delete().where(self._where(self.rows, device, flow, model)
                                               & (self.rows.c.row_key == v["row_key"])))
            c.execute(self.rows.insert().values(**v))
            self.bump(c)

    def header(self, device: str, flow: str, model: str, conn: Any = None) -> dict[str, Any]:
        """A table's header (``{}`` when it has none), its reference blocks under ``references``."""
        from profiler._table_schema import _level_summary, level_key

        if conn is None and not self.ready(write=False):
            return {}
        with (self.engine.connect() if conn is None else contextlib.nullcontext(conn)) as c:
            got = c.execute(self.sa.select(self.tables.c.header).where(
                self._where(self.tables, device, flow, model))).first()
            b = self.blocks.c
            blocks = c.execute(self.sa.select(b.variant, b.phase, b.prompt_len, b.batch, b.threads, b.reference,
                                              b.p50_ms, b.p10_ms, b.p90_ms, b.n, b.created, b.quantiles_ms)
                               .where(self._where(self.blocks, device, flow, model)).order_by(b.id)).all()
        header: dict[str, Any] = json.loads(got[0]) if got else {}
        refs: dict[str, Any] = {}
        for v, ph, p, bt, t, ref, p50, p10, p90, n, created, q in blocks:
            e = refs.setdefault(level_key(v, ph, p, bt, t, ref), {
                "variant": v, "phase": ph, "prompt_len": p, "batch": bt, "threads": t, "reference": ref, "blocks": []})
            e["blocks"].append({"p50_ms": p50, "p10_ms": p10, "p90_ms": p90, "n": n, "created": created,
                                **({"quantiles_ms": json.loads(q)} if q else {})})
        for e in refs.values():
            e.update(_level_summary(e["blocks"]))
        if refs:
            header["references"] = refs
        return header

    def put_header(self, conn: Any, device: str, flow: str, model: str, header: dict[str, Any]) -> None:
        """Write a table's header (its ``references`` are stored as blocks: :meth:`add_blocks`)."""
        body = dump({k: v for k, v in header.items() if k != "references"})
        where = self._where(self.tables, device, flow, model)
        if conn.execute(self.sa.select(self.tables.c.device).where(where)).first() is None:
            if self.insert_ignore(conn, self.tables, [{"device": device, "flow": flow, "model": model,
                                                       "header": body}], ("device", "flow", "model")):
                return
        conn.execute(self.tables.update().where(where).values(header=body))

    def add_blocks(self, conn: Any, device: str, flow: str, model: str, references: dict[str, Any]) -> int:
        """Insert the blocks of a header's ``references`` (each once); returns how many were new."""
        from profiler._table_schema import level_key

        values = []
        for e in references.values():
            k = level_key(e["variant"], e["phase"], e["prompt_len"], e["batch"], e["threads"], e["reference"])
            for b in e.get("blocks") or []:
                values.append({"device": device, "flow": flow, "model": model, "level_key": k,
                               "variant": e["variant"], "phase": e["phase"], "prompt_len": int(e["prompt_len"]),
                               "batch": int(e["batch"]), "threads": int(e["threads"]), "reference": e["reference"],
                               "p50_ms": float(b["p50_ms"]), "p10_ms": b.get("p10_ms"), "p90_ms": b.get("p90_ms"),
                               "n": int(b.get("n", 0)), "created": str(b.get("created", "")),
                               "quantiles_ms": dump(b["quantiles_ms"]) if b.get("quantiles_ms") else None})
        idx = ("device", "flow", "model", "level_key", "created", "p50_ms")
        return len(self.insert_ignore(conn, self.blocks, values, idx))


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
