"""The latency lookup table (LUT): a pandas DataFrame stored as Parquet next to a YAML header.

One table per (device, flow, model): ``<root>/<device>/<flow>-<model>.parquet`` and ``.yaml``.
A row is one (variant, depth, width, phase, batch, prompt_len, source); ``source`` says how the
number was obtained: ``measured`` (timed whole model), ``per-layer`` (composed from measured
shallow models), ``predicted`` or ``roofline`` (computed), ``transferred`` (few-shot: estimated
from other lines of the store and K measurements of this one, :mod:`profiler.transfer`; ``n`` is
0, ``p10_ms``/``p90_ms`` hold its 90% interval). Rows of different sources are
never merged: they are separate rows, and readers choose explicitly.

Durability: :meth:`LatencyTable.append` takes an exclusive ``fcntl`` lock, re-reads the file,
skips the row if its key is already there, and writes the whole table to a temporary file that
is fsynced and ``os.replace``-d over the old one. A SIGKILL at any instant leaves either the
old or the new file, so no completed row is lost and none is duplicated; re-running the same
command skips the rows present.

Row key and provenance: the key also holds ``threads`` and ``protocol`` (``paired-v1`` for rows
timed by :func:`profiler.measure.measure_paired`, ``paired-v2`` when the artifacts were rebuilt
between rounds, :attr:`profiler.measure.MeasureConfig.rebuild`; rows of older tables read as ``legacy``, their
threads taken from the header's environment record), so a re-run with another thread count or
protocol writes new rows instead of silently reusing rows measured under other settings. Every
row also records ``versions`` (runtime versions, a JSON string), ``reference`` (the key of the
shape it was paired with, e.g. ``d30-w1.000``), ``ratio``/``ratio_lo``/``ratio_hi`` (median
paired ratio to the reference and its 90% bootstrap interval), ``util`` (median CPU use per
thread: a contention diagnostic, never a filter) and ``created``. Older Parquet files lack
these columns and read with defaults (:data:`OPTIONAL`).

Reference levels (drift-proof milliseconds): the header's ``references`` mapping holds, per
(variant, phase, prompt_len, batch, threads, reference shape), the median of the reference's
samples in every block that was timed against it (``blocks``), their median (``level_ms``,
the reference's absolute level over all blocks) and spread (``p10_ms``/``p90_ms`` of the block
medians: the host's drift while the table was measured). :meth:`LatencyTable.corrected` turns
ratios into milliseconds, ``ms = ratio * level_ms``; legacy rows keep their raw median with the
order-statistic 90% interval of their samples.

Separate attention/MLP widths: a row of a ``d24-a0.667-m0.750`` shape has ``width`` = the MLP
width and ``attn_width`` = the attention width; one-ratio rows (and every row of older files)
have ``attn_width`` NaN, meaning today's policy from ``width``. ``attn_width`` is part of the key,
NaN matching NaN, so old tables read unchanged and the two forms never overwrite each other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import yaml

from amoeba_core.errors import AmoebaError
from amoeba_core.filelock import file_lock, read_snapshot
from profiler.device import profiles_root
from profiler.measure import LatencyStats, median_ci_ms
from profiler._table_schema import (  # noqa: F401 - re-exported: profiler.table is their public home
    COLUMNS, KEY_COLUMNS, LEVEL_QUANTILES, OPTIONAL, SOURCES, RefLevel, _has, _level_summary, _match, _pooled_median,
    _quantiles, level_key, row_key, row_width_key,
)

log = logging.getLogger(__name__)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def table_paths(device: str, flow: str, model: str, root: Path | str | None = None) -> tuple[Path, Path]:
    base = profiles_root(root) / device / f"{flow}-{model}"
    return base.with_suffix(".parquet"), base.with_suffix(".yaml")


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c, t in COLUMNS.items():
        if c not in df:
            df[c] = pd.Series([OPTIONAL.get(c)] * len(df), dtype=t if t != "object" else "object")
        if c in OPTIONAL:
            df[c] = df[c].fillna(OPTIONAL[c])
        if t != "object":
            df[c] = df[c].astype(t)
    df["width"] = df["width"].round(3)
    df["attn_width"] = df["attn_width"].round(3)
    return df[list(COLUMNS)].reset_index(drop=True)


def read_parquet(path: Path, thread_defaults: dict[str, int] | None = None) -> pd.DataFrame:
    """Read a table file; ``thread_defaults`` (variant -> threads) fills the threads of files
    written before the column existed."""
    try:
        df = pd.read_parquet(io.BytesIO(read_snapshot(path)[0]))  # one open: replace-safe
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise AmoebaError(
            f"corrupt latency table {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    missing = set(COLUMNS) - set(df.columns) - set(OPTIONAL)
    if missing:
        raise AmoebaError(f"corrupt latency table {path}: missing columns {sorted(missing)}")
    df["samples_ms"] = df["samples_ms"].map(lambda x: [float(v) for v in x] if x is not None else [])
    if "threads" not in df.columns and thread_defaults:
        df["threads"] = df["variant"].map(lambda v: thread_defaults.get(v, 0))
    return _normalise(df)


def read_header(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise AmoebaError(f"corrupt table header {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not {"device", "flow", "model"} <= set(data):
        raise AmoebaError(f"corrupt table header {path}: expected a mapping with device, flow, model")
    return data


def _atomic_write_bytes(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LatencyTable:
    """One device/flow/model LUT on disk."""

    def __init__(self, device: str, flow: str, model: str, root: Path | str | None = None) -> None:
        self.device, self.flow, self.model = device, flow, model
        self.path, self.header_path = table_paths(device, flow, model, root)
        self.lock_path = self.path.with_name(f".{self.path.stem}.lock")
        self.header: dict[str, Any] = read_header(self.header_path) if self.header_path.exists() else {}
        self.df: pd.DataFrame = self._read()

    def _read(self) -> pd.DataFrame:
        if not self.path.exists():
            return _empty()
        envs = self.header.get("environments") or {}
        threads = {v: int(e["threads"]) for v, e in envs.items() if isinstance(e, dict) and e.get("threads")}
        return read_parquet(self.path, threads)

    @classmethod
    def open(cls, device: str, flow: str, model: str, root: Path | str | None = None) -> LatencyTable:
        return cls(device, flow, model, root)

    @property
    def exists(self) -> bool:
        return self.path.exists() or self.header_path.exists()

    # -- reading -------------------------------------------------------------------
    def reload(self) -> None:
        self.header = read_header(self.header_path) if self.header_path.exists() else {}
        self.df = self._read()

    def rows(
        self,
        phase: str | None = None,
        variant: str | None = None,
        prompt_len: int | None = None,
        source: str | tuple[str, ...] | None = None,
        batch: int | None = None,
    ) -> pd.DataFrame:
        df = self.df
        if phase is not None:
            df = df[df["phase"] == phase]
        if variant is not None:
            df = df[df["variant"] == variant]
        if prompt_len is not None:
            df = df[df["prompt_len"] == int(prompt_len)]
        if batch is not None:
            df = df[df["batch"] == int(batch)]
        if source is not None:
            df = df[df["source"].isin([source] if isinstance(source, str) else list(source))]
        return df

    def has(self, key: dict[str, Any]) -> bool:
        return _has(self.df, key)

    @property
    def variants(self) -> list[str]:
        return sorted(self.df["variant"].dropna().unique().tolist())

    # -- writing -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.lock_path):
            _remove_stale_temps(self.path.parent)
            yield

    def write_header(
        self, updates: dict[str, Any], environment: dict[str, Any] | None = None, variant: str | None = None
    ) -> None:
        """Create or update the YAML header (atomically)."""
        with self._locked():
            header = (
                read_header(self.header_path)
                if self.header_path.exists()
                else {
                    "device": self.device,
                    "flow": self.flow,
                    "model": self.model,
                    "created": now_utc(),
                    "variants": [],
                    "environments": {},
                }
            )
            header.update(updates)
            if variant is not None:
                if variant not in header.setdefault("variants", []):
                    header["variants"].append(variant)
                if environment is not None:
                    header.setdefault("environments", {})[variant] = json.loads(json.dumps(environment, default=str))
            header["updated"] = now_utc()
            text = yaml.safe_dump(header, sort_keys=False, default_flow_style=None)
            _atomic_write_bytes(self.header_path, lambda p: p.write_text(text))
            self.header = header

    def append(self, row: dict[str, Any]) -> bool:
        """Add one row atomically; returns False (and writes nothing) if its key is present."""
        row = {**row, "device": self.device, "flow": self.flow, "model": self.model}
        row.setdefault("created", now_utc())
        if row.get("source") not in SOURCES:
            raise AmoebaError(f"row source must be one of {SOURCES}, got {row.get('source')!r}")
        with self._locked():
            current = self._read()
            if _has(current, row):
                self.df = current
                return False
            new = (
                _normalise(pd.concat([current, pd.DataFrame([row])], ignore_index=True))
                if len(current)
                else _normalise(pd.DataFrame([row]))
            )
            _atomic_write_bytes(self.path, lambda p: new.to_parquet(p, index=False))
            self.df = new
            return True

    def replace(self, row: dict[str, Any]) -> None:
        """Atomically put ``row`` in place of the row with the same key (or add it)."""
        row = {**row, "device": self.device, "flow": self.flow, "model": self.model}
        row.setdefault("created", now_utc())
        with self._locked():
            current = self._read()
            keep = current[~_match(current, row)] if len(current) else current
            new = (
                _normalise(pd.concat([keep, pd.DataFrame([row])], ignore_index=True))
                if len(keep)
                else _normalise(pd.DataFrame([row]))
            )
            _atomic_write_bytes(self.path, lambda p: new.to_parquet(p, index=False))
            self.df = new

    def get(self, key: dict[str, Any]) -> pd.Series | None:
        hit = self.df[_match(self.df, key)] if len(self.df) else self.df
        return None if hit.empty else hit.iloc[0]

    # -- reference levels (drift-proof milliseconds) -----------------------------------
    def add_reference_block(
        self, variant: str, phase: str, prompt_len: int, batch: int, threads: int, reference: str,
        stats: LatencyStats,
    ) -> RefLevel:
        """Record one block's reference samples (atomically, under the lock) and return the
        updated level of that reference."""
        key = level_key(variant, phase, prompt_len, batch, threads, reference)
        with self._locked():
            header = read_header(self.header_path) if self.header_path.exists() else {
                "device": self.device, "flow": self.flow, "model": self.model, "created": now_utc(),
                "variants": [], "environments": {}}
            refs = header.setdefault("references", {})
            entry = refs.setdefault(key, {"variant": variant, "phase": phase, "prompt_len": int(prompt_len),
                                          "batch": int(batch), "threads": int(threads), "reference": reference,
                                          "blocks": []})
            entry["blocks"].append({"p50_ms": round(stats.p50_ms, 6), "p10_ms": round(stats.p10_ms, 6),
                                    "p90_ms": round(stats.p90_ms, 6), "n": stats.n, "created": now_utc(),
                                    "quantiles_ms": _quantiles(stats.samples_ms)})
            entry.update(_level_summary(entry["blocks"]))
            header["updated"] = now_utc()
            text = yaml.safe_dump(header, sort_keys=False, default_flow_style=None)
            _atomic_write_bytes(self.header_path, lambda p: p.write_text(text))
            self.header = header
        return RefLevel.from_entry(entry)

    def reference_levels(self) -> dict[str, RefLevel]:
        """Every reference level of the header, by :func:`level_key`."""
        out = {}
        for k, e in (self.header.get("references") or {}).items():
            try:
                out[k] = RefLevel.from_entry(e)
            except (KeyError, TypeError, ValueError):
                raise AmoebaError(f"corrupt table header {self.header_path}: reference {k!r}") from None
        return out

    def corrected(self, rows: pd.DataFrame | None = None) -> pd.DataFrame:
        """``rows`` (default: all) with drift-corrected milliseconds added: ``ms``, ``ms_lo``,
        ``ms_hi`` (``ratio``, ``ratio_lo``, ``ratio_hi`` times the reference level) and
        ``level_ms``. Rows without a ratio or level (legacy, computed) keep ``p50_ms``, with the
        order-statistic 90% interval of the median of their samples (NaN without samples)."""
        df = (self.df if rows is None else rows).copy()
        levels = self.reference_levels()
        lv = [
            levels.get(level_key(v, ph, p, b, t, r)) if isinstance(r, str) and r else None
            for v, ph, p, b, t, r in zip(df["variant"], df["phase"], df["prompt_len"], df["batch"], df["threads"],
                                         df["reference"])
        ]
        level = np.array([x.level_ms if x is not None else np.nan for x in lv], dtype=float)
        ratio = df["ratio"].to_numpy(dtype=float)
        ok = ~np.isnan(level) & ~np.isnan(ratio)
        ci = [median_ci_ms(xs) for xs in df["samples_ms"]]
        lo_abs = np.array([c[0] for c in ci], dtype=float)
        hi_abs = np.array([c[1] for c in ci], dtype=float)
        df["level_ms"] = level
        df["ms"] = np.where(ok, ratio * level, df["p50_ms"].to_numpy(dtype=float))
        df["ms_lo"] = np.where(ok, df["ratio_lo"].to_numpy(dtype=float) * level, lo_abs)
        df["ms_hi"] = np.where(ok, df["ratio_hi"].to_numpy(dtype=float) * level, hi_abs)
        return df

    def export_csv(self, path: Path | str) -> Path:
        out = Path(path)
        df = self.df.copy()
        df["samples_ms"] = df["samples_ms"].map(lambda xs: json.dumps([round(float(x), 4) for x in xs]))
        df.to_csv(out, index=False)
        return out


def _remove_stale_temps(folder: Path) -> None:
    """Temporary files of writers that were killed mid-write (their pid is gone)."""
    for tmp in folder.glob(".*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)


