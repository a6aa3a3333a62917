"""The latency lookup table (LUT): a pandas DataFrame stored as Parquet next to a YAML header.

One table per (device, flow, model): ``<root>/<device>/<flow>-<model>.parquet`` and ``.yaml``.
A row is one (variant, depth, width, phase, batch, prompt_len, source); ``source`` says how the
number was obtained: ``measured`` (timed whole model), ``per-layer`` (composed from measured
shallow models), ``predicted`` or ``roofline`` (computed). Rows of different sources are
never merged: they are separate rows, and readers choose explicitly.

Durability: :meth:`LatencyTable.append` takes an exclusive ``fcntl`` lock, re-reads the file,
skips the row if its key is already there, and writes the whole table to a temporary file that
is fsynced and ``os.replace``-d over the old one. A SIGKILL at any instant leaves either the
old or the new file, so no completed row is lost and none is duplicated; re-running the same
command skips the rows present.
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

import pandas as pd
import yaml

from amoeba_core.errors import AmoebaError
from amoeba_core.filelock import file_lock, read_snapshot
from profiler.device import profiles_root

log = logging.getLogger(__name__)

SOURCES = ("measured", "per-layer", "predicted", "roofline")
KEY_COLUMNS = ["variant", "depth", "width", "phase", "batch", "prompt_len", "source"]
COLUMNS: dict[str, str] = {
    "device": "string",
    "flow": "string",
    "variant": "string",
    "model": "string",
    "depth": "int64",
    "width": "float64",
    "phase": "string",
    "batch": "int64",
    "prompt_len": "int64",
    "p50_ms": "float64",
    "p10_ms": "float64",
    "p90_ms": "float64",
    "n": "int64",
    "discarded": "int64",
    "samples_ms": "object",
    "source": "string",
    "created": "string",
}


OPTIONAL: dict[str, object] = {"discarded": 0}  # columns added later: default for older files


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
    return df[list(COLUMNS)].reset_index(drop=True)


def read_parquet(path: Path) -> pd.DataFrame:
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
        self.df: pd.DataFrame = read_parquet(self.path) if self.path.exists() else _empty()

    @classmethod
    def open(cls, device: str, flow: str, model: str, root: Path | str | None = None) -> LatencyTable:
        return cls(device, flow, model, root)

    @property
    def exists(self) -> bool:
        return self.path.exists() or self.header_path.exists()

    # -- reading -------------------------------------------------------------------
    def reload(self) -> None:
        self.header = read_header(self.header_path) if self.header_path.exists() else {}
        self.df = read_parquet(self.path) if self.path.exists() else _empty()

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
            text = yaml.safe_dump(header, sort_keys=False)
            _atomic_write_bytes(self.header_path, lambda p: p.write_text(text))
            self.header = header

    def append(self, row: dict[str, Any]) -> bool:
        """Add one row atomically; returns False (and writes nothing) if its key is present."""
        row = {**row, "device": self.device, "flow": self.flow, "model": self.model}
        row.setdefault("created", now_utc())
        if row.get("source") not in SOURCES:
            raise AmoebaError(f"row source must be one of {SOURCES}, got {row.get('source')!r}")
        with self._locked():
            current = read_parquet(self.path) if self.path.exists() else _empty()
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
            current = read_parquet(self.path) if self.path.exists() else _empty()
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


def _match(df: pd.DataFrame, key: dict[str, Any]) -> pd.Series:
    m = pd.Series(True, index=df.index)
    for c in KEY_COLUMNS:
        v = key[c]
        m &= (df[c].round(3) == round(float(v), 3)) if c == "width" else (df[c] == v)
    return m


def _has(df: pd.DataFrame, key: dict[str, Any]) -> bool:
    return False if df.empty else bool(_match(df, key).any())


def row_key(
    variant: str, depth: int, width: float, phase: str, batch: int, prompt_len: int, source: str = "measured"
) -> dict[str, Any]:
    return {
        "variant": variant,
        "depth": int(depth),
        "width": round(float(width), 3),
        "phase": phase,
        "batch": int(batch),
        "prompt_len": int(prompt_len),
        "source": source,
    }
