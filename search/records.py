"""Accuracy records of a run and where they live: the store (:mod:`profiler.store`).

One :class:`AccuracyRecord` per (model fingerprint, shape key, fidelity context) is kept in the
store's ``amoeba_accuracy`` table under the run's name (its folder's name), with the columns a
query selects on typed (depth, width, top-1, perplexity, kind) and the whole record as JSON. The
run's store is ``<run>/amoeba.db`` (there the run is named ``.``: a copied or renamed run folder
keeps its records) unless a database URL is given (``amoeba search --storage
postgresql://...``: the study's database holds its accuracy records too, so every machine of a
search shares both). Inserts are ``INSERT ... ON CONFLICT DO NOTHING`` in a transaction: several
search processes can share a run, and a record is stored exactly once.

A run written as ``<run>/accuracy.parquet`` (the earlier format) is imported on first open (and
again if the file changes); the Parquet file is left as it was.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from amoeba_core.errors import AmoebaError

log = logging.getLogger(__name__)

LEGACY_FILE = "accuracy.parquet"


@dataclass(frozen=True)
class AccuracyRecord:
    fingerprint: str
    key: str
    depth: int
    width: float
    top1_acc: float
    ppl: float | None = None
    nll: float | None = None
    n_tokens: int | None = None
    seconds: float | None = None
    kind: str = "strategy"  # or "baseline" (uniform shrink outside the strategy)
    top1_lo: float | None = None  # 90% bootstrap interval over windows
    top1_hi: float | None = None
    ppl_lo: float | None = None
    ppl_hi: float | None = None
    windows: int | None = None  # evaluation windows scored (the fidelity)
    tokens: int | None = None  # tokens run through the model to score it (the cost)
    window_nll: tuple[float, ...] | None = None  # per-window sums, in scoring order
    window_correct: tuple[float, ...] | None = None
    window_count: tuple[float, ...] | None = None
    window_doc: tuple[float, ...] | None = None  # document of each window (intervals resample documents)
    ci_unit: str | None = None  # what the intervals resampled: "document" or "window"

    def interval(self) -> tuple[float, float]:
        """(lo, hi) of top-1; the point value twice when no interval was stored."""
        lo = self.top1_acc if self.top1_lo is None else self.top1_lo
        hi = self.top1_acc if self.top1_hi is None else self.top1_hi
        return float(lo), float(hi)


COLUMNS = list(AccuracyRecord.__dataclass_fields__)
_WINDOW_FIELDS = ("window_nll", "window_correct", "window_count", "window_doc")


def record_dict(r: AccuracyRecord) -> dict[str, Any]:
    """The record as plain JSON-able values (window sums as lists of floats)."""
    d = asdict(r)
    for k in _WINDOW_FIELDS:
        d[k] = None if d[k] is None else [float(x) for x in d[k]]
    return d


def record_from_dict(d: dict[str, Any]) -> AccuracyRecord:
    def opt(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and v != v) else v

    def opt_int(v: Any) -> int | None:
        v = opt(v)
        return None if v is None else int(v)

    def seq(v: Any) -> tuple[float, ...] | None:
        return None if v is None or isinstance(v, float) else tuple(float(x) for x in v)

    return AccuracyRecord(str(d["fingerprint"]), str(d["key"]), int(d["depth"]), float(d["width"]),
                          float(d["top1_acc"]), opt(d.get("ppl")), opt(d.get("nll")), opt_int(d.get("n_tokens")),
                          opt(d.get("seconds")), str(d.get("kind") or "strategy"), opt(d.get("top1_lo")),
                          opt(d.get("top1_hi")), opt(d.get("ppl_lo")), opt(d.get("ppl_hi")), opt_int(d.get("windows")),
                          opt_int(d.get("tokens")), *(seq(d.get(k)) for k in _WINDOW_FIELDS),
                          None if opt(d.get("ci_unit")) is None else str(d["ci_unit"]))


def accuracy_values(run: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the store's accuracy table for ``records`` (record dicts) of run ``run``."""
    return [{"run": run, "fingerprint": r["fingerprint"], "key": r["key"], "depth": int(r["depth"]),
             "width": float(r["width"]), "top1_acc": float(r["top1_acc"]), "ppl": r.get("ppl"),
             "kind": r.get("kind") or "strategy", "record": json.dumps(r, sort_keys=True, default=float)}
            for r in records]


def _sql_url(url: str | None) -> bool:
    return bool(url) and "://" in str(url) and str(url).split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql")


class AccuracyTable:
    """The accuracy records of one run, keyed by (fingerprint, key), in the store (module docstring).

    ``path``: the run folder (or, as earlier versions named it, ``<run>/accuracy.parquet``);
    ``url``: a SQLite/PostgreSQL URL to keep them in instead of the run's own store."""

    def __init__(self, path: Path | str, url: str | None = None) -> None:
        from profiler.store import open_store

        p = Path(path)
        self.run_dir = p.parent if p.suffix in (".parquet", ".db") else p
        self.store = open_store(url if _sql_url(url) else self.run_dir)
        # In the run's own file the records are the run's whatever its folder is called (a copied or
        # renamed run keeps them); in a shared database they are filed under the folder's name.
        own = self.store.file is not None and self.store.file.resolve() == (self.run_dir / "amoeba.db").resolve()
        self.run = "." if own else self.run_dir.resolve().name
        self.path = self.store.file or Path(self.run_dir)  # for messages
        self._rows: dict[tuple[str, str], AccuracyRecord] = {}
        self._rev: int | None = None
        self.reload()

    def __repr__(self) -> str:
        return f"AccuracyTable({self.run!r} in {self.store})"

    def _import_legacy(self) -> None:
        import pandas as pd

        legacy = self.run_dir / LEGACY_FILE
        if not legacy.is_file():
            return
        st = self.store
        key, stamp = str(legacy.resolve()), f"{legacy.stat().st_size}:{legacy.stat().st_mtime_ns}"
        if st.ready(write=False):
            with st.engine.connect() as c:
                got = c.execute(st.sa.select(st.imports.c.stamp).where(st.imports.c.path == key)).first()
            if got is not None and got[0] == stamp:
                return
        try:
            df = pd.read_parquet(io.BytesIO(legacy.read_bytes()))
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a truncated or foreign file
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise AmoebaError(f"corrupt accuracy table {legacy}: {first}") from None
        need = {"fingerprint", "key", "depth", "width", "top1_acc"}
        if not need <= set(df.columns):
            raise AmoebaError(f"corrupt accuracy table {legacy}: missing columns {sorted(need - set(df.columns))}")
        recs = [record_dict(record_from_dict(r._asdict())) for r in df.itertuples(index=False)]
        with st.begin() as c:
            n = len(st.insert_ignore(c, st.accuracy, accuracy_values(self.run, recs), ("run", "fingerprint", "key")))
            c.execute(st.imports.delete().where(st.imports.c.path == key))
            c.execute(st.imports.insert().values(path=key, stamp=stamp))
            if n:
                st.bump(c)
        log.info("imported %d accuracy records of %s into %s", n, legacy, st)

    def reload(self) -> None:
        """Read the run's records again if the store moved since the last read."""
        self._import_legacy()
        rev = self.store.revision()
        if rev == self._rev:
            return
        recs = [record_from_dict(d) for d in self.store.run_records(self.run)]
        self._rows = {(r.fingerprint, r.key): r for r in recs}
        self._rev = rev

    def get(self, fingerprint: str, key: str) -> AccuracyRecord | None:
        hit = self._rows.get((fingerprint, key))
        if hit is None:
            self.reload()
            hit = self._rows.get((fingerprint, key))
        return hit

    def records(self, fingerprint: str | None = None) -> list[AccuracyRecord]:
        self.reload()
        return [r for (fp, _), r in self._rows.items() if fingerprint is None or fp == fingerprint]

    def put(self, rec: AccuracyRecord) -> None:
        """Store ``rec`` unless a record of its (fingerprint, key) is there already (that one is kept)."""
        st = self.store
        with st.begin() as c:
            if st.insert_ignore(c, st.accuracy, accuracy_values(self.run, [record_dict(rec)]),
                                ("run", "fingerprint", "key")):
                st.bump(c)
        self._rows.setdefault((rec.fingerprint, rec.key), rec)
