"""Files in and out of the store: the earlier table format, and Parquet as an interchange format.

* :func:`import_folder`: a profiles root written by an earlier version keeps each table as
  ``<device>/<flow>-<model>.parquet`` (rows) and ``.yaml`` (header, reference blocks). On first open
  the store imports every such table it has not imported in that state (the files' sizes and
  mtimes are recorded), in one transaction per table; the files are left in place. Rows of
  files that predate a column read with that column's default, threads from the header's
  environment record.
* :func:`export_parquet` / :func:`import_parquet` (``amoeba table export|import``): one table as
  one Parquet file, its header (reference blocks included) in the file's metadata under
  ``amoeba.header``. Importing merges by row key: rows present are kept, so importing twice
  stores nothing new.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amoeba_core.errors import AmoebaError

if TYPE_CHECKING:
    from profiler.store import Store

log = logging.getLogger(__name__)

META_KEY = b"amoeba.header"
_SEEN: dict[tuple[str, str], str] = {}  # (store, file) -> the stamp imported, this process
DEFAULTS: dict[str, Any] = {"discarded": 0, "threads": 0, "protocol": "legacy", "ratio": None, "ratio_lo": None,
                            "ratio_hi": None, "reference": "", "util": None, "versions": "", "attn_width": None,
                            "p10_ms": None, "p90_ms": None, "n": 0, "created": None}


REQUIRED = ("variant", "depth", "width", "phase", "batch", "prompt_len", "p50_ms", "source")


def legacy_paths(root: Path | str, device: str, flow: str, model: str) -> tuple[Path, Path]:
    """Where the earlier format kept a table: ``<root>/<device>/<flow>-<model>.parquet`` and ``.yaml``."""
    base = Path(root) / device / f"{flow}-{model}"
    return base.with_suffix(".parquet"), base.with_suffix(".yaml")


def _clean(row: dict[str, Any], threads: dict[str, int]) -> dict[str, Any]:
    out = {**DEFAULTS, **{k: v for k, v in row.items() if v is not None}}
    if "threads" not in row:
        out["threads"] = threads.get(str(row.get("variant")), 0)
    for k, v in list(out.items()):
        if isinstance(v, float) and math.isnan(v):
            out[k] = None
    out["samples_ms"] = [float(x) for x in (row.get("samples_ms") if row.get("samples_ms") is not None else [])]
    return out


def _frame_rows(df: Any, threads: dict[str, int]) -> list[dict[str, Any]]:
    return [_clean(r, threads) for r in df.to_dict(orient="records")]


def _thread_defaults(header: dict[str, Any]) -> dict[str, int]:
    envs = header.get("environments") or {}
    return {v: int(e["threads"]) for v, e in envs.items() if isinstance(e, dict) and e.get("threads")}


def merge_table(store: Store, conn: Any, device: str, flow: str, model: str, header: dict[str, Any],
                rows: list[dict[str, Any]]) -> int:
    """Add a table's header (when it has none yet), reference blocks and rows; returns the rows inserted."""
    if not store.header(device, flow, model, conn):
        store.put_header(conn, device, flow, model, {**header, "device": device, "flow": flow, "model": model})
    store.add_blocks(conn, device, flow, model, header.get("references") or {})
    return len(store.insert_rows(conn, device, flow, model, rows))


def import_folder(store: Store, folder: Path) -> int:
    """Import the earlier format's tables under ``folder`` (module docstring); returns the rows added."""
    import pandas as pd
    import yaml

    from profiler.flows import FLOWS

    if not folder.is_dir():
        return 0
    files = sorted(folder.glob("*/*.parquet"))
    if not files:
        return 0
    added = 0
    for path in files:
        flow = next((f for f in sorted(FLOWS, key=len, reverse=True) if path.stem.startswith(f + "-")), None)
        if flow is None:
            continue
        device, model = path.parent.name, path.stem[len(flow) + 1:]
        yml = path.with_suffix(".yaml")
        stamp = "|".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (path, yml) if p.exists())
        key = str(path.resolve())
        if _SEEN.get((store.url, key)) == stamp:
            continue
        if store.ready(write=False):
            with store.engine.connect() as c:
                got = c.execute(store.sa.select(store.imports.c.stamp).where(store.imports.c.path == key)).first()
            if got is not None and got[0] == stamp:
                _SEEN[(store.url, key)] = stamp
                continue
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise AmoebaError(f"corrupt latency table {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        try:
            header = yaml.safe_load(yml.read_text()) if yml.exists() else {}
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
            raise AmoebaError(f"corrupt table header {yml}: {str(e).splitlines()[0]}") from None
        if not isinstance(header, dict):
            raise AmoebaError(f"corrupt table header {yml}: expected a mapping")
        missing = sorted(set(REQUIRED) - set(df.columns))
        if missing:
            raise AmoebaError(f"corrupt latency table {path}: missing columns {missing}")
        threads = _thread_defaults(header or store.header(device, flow, model))
        with store.begin() as c:
            n = merge_table(store, c, device, flow, model, header, _frame_rows(df, threads))
            c.execute(store.imports.delete().where(store.imports.c.path == key))
            c.execute(store.imports.insert().values(path=key, stamp=stamp))
            if n:
                store.bump(c)
        _SEEN[(store.url, key)] = stamp
        added += n
        log.info("imported %d rows of %s into %s", n, path, store)
    return added


def export_parquet(store: Store, device: str, flow: str, model: str, out: Path) -> int:
    """Write one table as a Parquet file (header in its metadata); returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = store.latency_rows(device, flow, model)
    if not rows:
        raise AmoebaError(f"no latency table {device}/{flow}-{model} in {store}")
    header = store.header(device, flow, model)
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(header, default=str)})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return len(rows)


def import_parquet(store: Store, path: Path, device: str | None = None) -> tuple[str, str, str, int]:
    """Merge an exported table (optionally under another device name); returns (device, flow, model, rows added)."""
    import pyarrow.parquet as pq

    from profiler.store.rows import LatencyRow, row_error

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001
        raise AmoebaError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise AmoebaError(f"{path} is not an exported latency table (no {META_KEY.decode()} metadata)")
    header = json.loads(raw)
    dev, flow, model = device or header.get("device"), header.get("flow"), header.get("model")
    if not (dev and flow and model):
        raise AmoebaError(f"{path}: its header names no device, flow and model")
    rows = _frame_rows(table.to_pandas(), _thread_defaults(header))
    for i, r in enumerate(rows):
        try:
            LatencyRow.model_validate(r)
        except ValueError as e:
            raise AmoebaError(f"{path}: row {i} is invalid: {row_error(e)}") from None
    with store.begin() as c:
        n = merge_table(store, c, dev, flow, model, {**header, "device": dev}, rows)
        if n:
            store.bump(c)
    return dev, flow, model, n
