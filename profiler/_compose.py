"""Per-layer composition for :mod:`profiler.plan`: rows for every requested depth from the measured
depth-1/2/4 rows (lines through their quantiles and paired ratios)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from profiler.predict import fit_line
from profiler.table import LatencyTable, now_utc, row_key
from amoeba_core.shape import grid_key

if TYPE_CHECKING:
    from profiler.plan import ProfilePlan


def _compose(plan: ProfilePlan, table: LatencyTable, variant: str) -> int:
    """Per-layer rows for every requested depth, from the measured depth-1/2/4 rows of this
    run's settings (threads, protocol): lines through their absolute p10/p50/p90 and through
    their paired ratios and ratio bounds (the composed ratio interval is the envelope of those
    lines), so the composed rows read in drift-corrected milliseconds like measured ones."""
    written = 0
    threads = plan.config.threads
    ref_name = grid_key(*plan.reference)
    for phase in plan.phases:
        rows = table.rows(phase=phase, variant=variant, prompt_len=plan.prompt_len, batch=plan.batch, source="measured")
        rows = rows[(rows["threads"] == threads) & (rows["protocol"] == plan.measure.protocol)]
        for w in plan.widths:
            sub = rows[(rows["width"].round(3) == round(w, 3)) & rows["attn_width"].isna()
                       & rows["depth"].isin(plan.measured_depths)]
            if sub["depth"].nunique() < 2:
                continue
            paired = sub["ratio"].notna().all() and (sub["reference"] == ref_name).all()
            for d in plan.depths:
                key = row_key(variant, d, w, phase, plan.batch, plan.prompt_len, "per-layer", threads,
                              plan.measure.protocol)
                row = {
                    **key,
                    "p50_ms": _compose_q(sub, "p50_ms", d),
                    "p10_ms": _compose_q(sub, "p10_ms", d),
                    "p90_ms": _compose_q(sub, "p90_ms", d),
                    "n": int(sub["n"].sum()),
                    "discarded": 0,
                    "samples_ms": [],
                    "created": now_utc(),
                    "ratio": _compose_q(sub, "ratio", d) if paired else math.nan,
                    "ratio_lo": _compose_q(sub, "ratio_lo", d) if paired else math.nan,
                    "ratio_hi": _compose_q(sub, "ratio_hi", d) if paired else math.nan,
                    "reference": ref_name if paired else "",
                    "util": float(sub["util"].median()),
                    "versions": str(sub["versions"].iloc[0]),
                }
                old = table.get(key)
                if old is None:
                    written += int(table.append(row))
                elif not math.isclose(float(old["p50_ms"]), row["p50_ms"], rel_tol=1e-9):
                    table.replace(row)  # its measured inputs were re-timed (--redo-contended)
                    written += 1
    return written


def _compose_q(sub: pd.DataFrame, col: str, depth: int) -> float:
    t0, slope = fit_line(sub["depth"], sub[col])
    return t0 + depth * slope


def _compose_q(sub: pd.DataFrame, col: str, depth: int) -> float:
    t0, slope = fit_line(sub["depth"], sub[col])
    return t0 + depth * slope
