"""The latency table's schema and keys: columns, row keys, shape keys and reference levels.

Split out of :mod:`profiler.table` (which re-exports every public name here): the column types of a
row (``COLUMNS``, defaults for columns added later in ``OPTIONAL``), the row key (``KEY_COLUMNS``,
:func:`row_key`, NaN ``attn_width`` matching NaN), and the reference levels a table's ratios are
corrected by (:class:`RefLevel`, pooled from timed blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from amoeba_core.shape import WidthAxes, split_key, width_key
from profiler.measure import LEGACY

from profiler.store import KEY_COLUMNS  # noqa: E402 - one key for the store and the DataFrame
from profiler.store.rows import SOURCES  # noqa: E402,F401 - re-exported
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
    "threads": "int64",
    "protocol": "string",
    "ratio": "float64",
    "ratio_lo": "float64",
    "ratio_hi": "float64",
    "reference": "string",
    "util": "float64",
    "versions": "string",
    "attn_width": "float64",  # NaN: one width ratio (today's policy); else the attention width, ``width`` = MLP
}


# columns added later: default for older files (and for rows written without them)
OPTIONAL: dict[str, object] = {
    "discarded": 0,
    "threads": 0,
    "protocol": LEGACY,
    "ratio": math.nan,
    "ratio_lo": math.nan,
    "ratio_hi": math.nan,
    "reference": "",
    "util": math.nan,
    "versions": "",
    "attn_width": math.nan,
}


def _match(df: pd.DataFrame, key: dict[str, Any]) -> pd.Series:
    m = pd.Series(True, index=df.index)
    for c in KEY_COLUMNS:
        v = key.get(c, OPTIONAL.get(c))
        if c == "attn_width":  # NaN (one ratio) matches NaN
            v = math.nan if v is None else float(v)
            m &= df[c].isna() if math.isnan(v) else (df[c].round(3) == round(v, 3))
        else:
            m &= (df[c].round(3) == round(float(v), 3)) if c == "width" else (df[c] == v)
    return m


def _has(df: pd.DataFrame, key: dict[str, Any]) -> bool:
    return False if df.empty else bool(_match(df, key).any())


def row_key(
    variant: str,
    depth: int,
    width: float | WidthAxes,
    phase: str,
    batch: int,
    prompt_len: int,
    source: str = "measured",
    threads: int = 0,
    protocol: str = LEGACY,
    attn_width: float | None = None,
) -> dict[str, Any]:
    """The key of a row; ``width`` may be a :func:`amoeba_core.shape.width_key` (separate widths)."""
    width, attn_width = split_key(width_key(width, attn_width))
    return {
        "attn_width": math.nan if attn_width is None else attn_width,
        "threads": int(threads),
        "protocol": protocol,
        "variant": variant,
        "depth": int(depth),
        "width": round(float(width), 3),
        "phase": phase,
        "batch": int(batch),
        "prompt_len": int(prompt_len),
        "source": source,
    }


def row_width_key(width: float, attn_width: float | None) -> float | WidthAxes:
    """The width key of a row's ``width``/``attn_width`` (NaN attention width: one ratio)."""
    return width_key(float(width), None if attn_width is None or pd.isna(attn_width) else float(attn_width))


def level_key(variant: str, phase: str, prompt_len: int, batch: int, threads: int, reference: str) -> str:
    return f"{variant}/{phase}/p{int(prompt_len)}/b{int(batch)}/t{int(threads)}/{reference}"


LEVEL_QUANTILES = 21  # a block's reference samples are kept as their 0%, 5%, ..., 100% quantiles (rounded like p50_ms)


def _quantiles(samples: Any) -> list[float]:
    return [round(float(x), 6) for x in np.quantile(np.asarray(samples, dtype=float), np.linspace(0, 1, LEVEL_QUANTILES))]


def _pooled_median(blocks: list[dict[str, Any]]) -> float:
    """Median of every block's samples together, from each block's quantiles weighted by its sample count."""
    vals = np.concatenate([np.asarray(b["quantiles_ms"], dtype=float) for b in blocks])
    w = np.concatenate([np.full(len(b["quantiles_ms"]), max(int(b.get("n", 1)), 1) / len(b["quantiles_ms"]))
                        for b in blocks])
    order = np.argsort(vals, kind="stable")
    cum = np.cumsum(w[order])
    return float(vals[order][np.searchsorted(cum, cum[-1] / 2)])


def _level_summary(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The level: the median of every reference sample of every block, pooled (from each block's
    quantiles; blocks written before quantiles were kept: the median of the block medians);
    p10/p90 of the block medians (the drift)."""
    med = np.asarray([float(b["p50_ms"]) for b in blocks])
    pooled = all(b.get("quantiles_ms") for b in blocks)
    return {
        "level_ms": round(_pooled_median(blocks) if pooled else float(np.median(med)), 6),
        "level_estimator": "pooled-samples" if pooled else "block-medians",
        "p10_ms": round(float(np.percentile(med, 10)), 6),
        "p90_ms": round(float(np.percentile(med, 90)), 6),
        "n_blocks": len(blocks),
        "n_samples": int(sum(int(b.get("n", 0)) for b in blocks)),
    }


@dataclass(frozen=True)
class RefLevel:
    """A reference shape's absolute level and the host's drift over the blocks.

    ``level_ms`` is the median of all the reference's samples over all blocks, pooled (computed
    from each block's 21 quantiles weighted by its sample count, which the header keeps): with a
    handful of blocks, the median of the block medians jumped between two speed modes of llama.cpp
    q4_0 (block medians 4.4 and 5.4 ms in both of two runs, levels 4.46 and 5.37 ms), while the
    pooled medians of the same runs agreed to 2.4% (a later pair still moved 13.8%: this uses every
    sample, it does not make an unstable runtime stable). ``p10_ms``/``p90_ms`` are those of the block
    medians (``drift``). Blocks written before samples were kept: the median of the block medians."""

    reference: str
    level_ms: float
    p10_ms: float
    p90_ms: float
    n_blocks: int
    blocks_ms: tuple[float, ...]

    @classmethod
    def from_entry(cls, e: dict[str, Any]) -> RefLevel:
        blocks = tuple(float(b["p50_ms"]) for b in e["blocks"])
        summ = _level_summary(e["blocks"])
        return cls(str(e["reference"]), summ["level_ms"], summ["p10_ms"], summ["p90_ms"], len(blocks), blocks)

    @property
    def drift(self) -> float:
        """(p90 - p10) / level of the block medians: how much the host moved."""
        return (self.p90_ms - self.p10_ms) / self.level_ms if self.level_ms else math.nan
