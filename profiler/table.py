"""The latency lookup table (LUT): one (device, flow, model)'s rows in the store, as a pandas DataFrame.

Rows live in the store (:mod:`profiler.store`: an embedded SQLite file ``<root>/amoeba.db`` by default,
a PostgreSQL URL when shared), one schema (:class:`profiler.store.rows.LatencyRow`). A row is one
(variant, depth, width, phase, batch, prompt_len, source); ``source`` says how the number was obtained:
``measured`` (timed whole model), ``per-layer`` (composed from measured shallow models), ``predicted``
or ``roofline`` (computed), ``transferred`` (few-shot: estimated from other lines of the store and K
measurements of this one, :mod:`profiler.transfer`; ``n`` is 0, ``p10_ms``/``p90_ms`` hold its 90%
interval). Rows of different sources are never merged: they are separate rows, and readers choose.

Durability: :meth:`LatencyTable.append` inserts the row in one transaction unless its key is
present (``ON CONFLICT DO NOTHING``): a SIGKILL at any instant loses no committed row and
duplicates none; re-running the same command skips the rows present.

Row key and provenance: the key also holds ``threads`` and ``protocol`` (``paired-v1`` for rows
timed by :func:`profiler.measure.measure_paired`, ``paired-v2`` when the artifacts were rebuilt
between rounds; rows of the earliest tables read as ``legacy``), so a re-run with another thread
count or protocol writes new rows instead of silently reusing rows measured under other settings.
Every row also records ``versions`` (runtime versions, a JSON string), ``reference`` (the key of the
shape it was paired with, e.g. ``d30-w1.000``), ``ratio``/``ratio_lo``/``ratio_hi`` (median paired
ratio to the reference and its 90% bootstrap interval), ``util`` (median CPU use per thread: a
contention diagnostic, never a filter) and ``created``.

Reference levels (drift-proof milliseconds): every block timed against a reference stores that
reference's samples (as quantiles) per (variant, phase, prompt_len, batch, threads, reference); the
header's ``references`` mapping is built from them: the pooled median (``level_ms``, the
reference's level over all blocks) and the spread of the block medians (``p10_ms``/``p90_ms``: the
host's drift while the table was measured). :meth:`LatencyTable.corrected` turns ratios into
milliseconds, ``ms = ratio * level_ms``; unpaired rows keep their raw median with the
order-statistic 90% interval of their samples.

Separate attention/MLP widths: a row of a ``d24-a0.667-m0.750`` shape has ``width`` = the MLP
width and ``attn_width`` = the attention width; one-ratio rows have ``attn_width`` NaN. ``attn_width``
is part of the key, NaN matching NaN, so the two forms never overwrite each other.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from amoeba_core.errors import AmoebaError
from profiler.store import open_store
from profiler.measure import LatencyStats, median_ci_ms
from profiler._table_schema import (  # noqa: F401 - re-exported: profiler.table is their public home
    COLUMNS, KEY_COLUMNS, LEVEL_QUANTILES, OPTIONAL, SOURCES, RefLevel, _has, _level_summary, _match, _pooled_median,
    _quantiles, level_key, row_key, row_width_key,
)

log = logging.getLogger(__name__)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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


class LatencyTable:
    """One device/flow/model LUT in the store (``root``: a profiles folder, a ``.db`` file or a URL)."""

    def __init__(self, device: str, flow: str, model: str, root: Path | str | None = None) -> None:
        self.device, self.flow, self.model = device, flow, model
        self.store = open_store(root)
        self.path = f"{self.store.url.split(':///', 1)[-1] if self.store.file else self.store}#{device}/{flow}-{model}"
        self.reload()

    def _read(self) -> pd.DataFrame:
        rows = self.store.latency_rows(self.device, self.flow, self.model)
        if not rows:
            return _empty()
        df = pd.DataFrame(rows)
        df["device"], df["flow"], df["model"] = self.device, self.flow, self.model
        return _normalise(df)

    @classmethod
    def open(cls, device: str, flow: str, model: str, root: Path | str | None = None) -> LatencyTable:
        return cls(device, flow, model, root)

    @property
    def exists(self) -> bool:
        return bool(len(self.df)) or bool(self.header)

    # -- reading -------------------------------------------------------------------
    def reload(self) -> None:
        self.header: dict[str, Any] = self.store.header(self.device, self.flow, self.model)
        self.df: pd.DataFrame = self._read()

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

    # -- writing (each one transaction) ------------------------------------------------
    def _header_in(self, conn: Any) -> dict[str, Any]:
        header = self.store.header(self.device, self.flow, self.model, conn)
        header.pop("references", None)
        return header or {"device": self.device, "flow": self.flow, "model": self.model, "created": now_utc(),
                          "variants": [], "environments": {}}

    def write_header(
        self, updates: dict[str, Any], environment: dict[str, Any] | None = None, variant: str | None = None
    ) -> None:
        """Create or update the header."""
        with self.store.begin() as c:
            header = self._header_in(c)
            header.update(updates)
            if variant is not None:
                if variant not in header.setdefault("variants", []):
                    header["variants"].append(variant)
                if environment is not None:
                    header.setdefault("environments", {})[variant] = json.loads(json.dumps(environment, default=str))
            header["updated"] = now_utc()
            self.store.put_header(c, self.device, self.flow, self.model, header)
            self.store.bump(c)
        self.header = self.store.header(self.device, self.flow, self.model)

    def _valid(self, row: dict[str, Any]) -> dict[str, Any]:
        from profiler.store.rows import LatencyRow, row_error

        row = {**row, "device": self.device, "flow": self.flow, "model": self.model}
        row.setdefault("created", now_utc())
        if row.get("source") not in SOURCES:
            raise AmoebaError(f"row source must be one of {SOURCES}, got {row.get('source')!r}")
        try:
            LatencyRow.model_validate(row)
        except ValueError as e:
            raise AmoebaError(f"invalid latency row for {self.path}: {row_error(e)}") from None
        return row

    def append(self, row: dict[str, Any]) -> bool:
        """Add one row (one transaction); returns False (and writes nothing) if its key is present."""
        row = self._valid(row)
        with self.store.begin() as c:
            added = bool(self.store.insert_rows(c, self.device, self.flow, self.model, [row]))
            if added:
                self.store.bump(c)
        self.df = self._read()
        return added

    def replace(self, row: dict[str, Any]) -> None:
        """Put ``row`` in place of the row with the same key (or add it), in one transaction."""
        self.store.replace_row(self.device, self.flow, self.model, self._valid(row))
        self.df = self._read()

    def get(self, key: dict[str, Any]) -> pd.Series | None:
        hit = self.df[_match(self.df, key)] if len(self.df) else self.df
        return None if hit.empty else hit.iloc[0]

    # -- reference levels (drift-proof milliseconds) -----------------------------------
    def add_reference_block(
        self, variant: str, phase: str, prompt_len: int, batch: int, threads: int, reference: str,
        stats: LatencyStats,
    ) -> RefLevel:
        """Record one block's reference samples and return the updated level of that reference."""
        key = level_key(variant, phase, prompt_len, batch, threads, reference)
        entry = {"variant": variant, "phase": phase, "prompt_len": int(prompt_len), "batch": int(batch),
                 "threads": int(threads), "reference": reference,
                 "blocks": [{"p50_ms": round(stats.p50_ms, 6), "p10_ms": round(stats.p10_ms, 6),
                             "p90_ms": round(stats.p90_ms, 6), "n": stats.n, "created": now_utc(),
                             "quantiles_ms": _quantiles(stats.samples_ms)}]}
        with self.store.begin() as c:
            self.store.put_header(c, self.device, self.flow, self.model, {**self._header_in(c), "updated": now_utc()})
            self.store.add_blocks(c, self.device, self.flow, self.model, {key: entry})
            self.store.bump(c)
        self.header = self.store.header(self.device, self.flow, self.model)
        return RefLevel.from_entry(self.header["references"][key])

    def reference_levels(self) -> dict[str, RefLevel]:
        """Every reference level of the header, by :func:`level_key`."""
        out = {}
        for k, e in (self.header.get("references") or {}).items():
            try:
                out[k] = RefLevel.from_entry(e)
            except (KeyError, TypeError, ValueError):
                raise AmoebaError(f"corrupt table header {self.path}: reference {k!r}") from None
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
