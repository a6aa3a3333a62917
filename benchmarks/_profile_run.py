"""What the latency benchmarks share: the host's load, a crash-isolated call, and one paired-protocol
profile of one flow into a fresh temporary root (nothing reused) read back as drift-corrected rows.

Used by reproducibility.py and predictor_accuracy.py.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from profiler.device import spec_only_root  # noqa: E402
from profiler.flows import parse_flow_spec  # noqa: E402
from profiler.measure import MeasureConfig  # noqa: E402
from profiler.plan import ProfilePlan, make_plan, run_profile  # noqa: E402
from profiler.table import LatencyTable, RefLevel  # noqa: E402

MODEL = "smollm2-135m"


def loadavg() -> str | None:
    """The 1/5/15-minute load averages, as /proc/loadavg prints them (None where there is none)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def _child(q: Any, fn: Callable, args: tuple) -> None:
    try:
        q.put(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put(("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))


def run_isolated(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in a fresh process: a runtime that kills its process (llama.cpp built for
    instructions this CPU lacks dies of SIGILL) becomes a reported error, not the end of the run."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, args))
    p.start()
    while True:
        try:
            status, value = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                p.join()
                code = p.exitcode or 0
                raise RuntimeError(f"the process died ({'signal ' + str(-code) if code < 0 else 'exit ' + str(code)})")
    p.join()
    if status == "error":
        raise RuntimeError(value)
    return value


@dataclass
class FlowRun:
    """One profile run: its plan, the measured rows with drift-corrected ``ms`` (``ratio x level``),
    the reference level of the run, and the load average before and after."""

    plan: ProfilePlan
    variant: str
    rows: pd.DataFrame
    level: RefLevel
    written: int
    seconds: float
    loadavg_before: str | None
    loadavg_after: str | None

    def level_record(self) -> dict:
        lv = self.level
        return {"reference": lv.reference, "level_ms": round(lv.level_ms, 4),
                "level_blocks_p10_ms": round(lv.p10_ms, 4), "level_blocks_p90_ms": round(lv.p90_ms, 4),
                "level_drift": round(lv.drift, 4), "n_blocks": lv.n_blocks,
                "median_util": round(float(self.rows["util"].median()), 3)}


def profile_flow(spec: str, base: Path, depths: tuple[int, ...], widths: tuple[float, ...], threads: int,
                 mcfg: MeasureConfig, prompt_len: int = 128, prefix: str = "amoeba-bench-") -> FlowRun:
    """Time ``spec`` (``flow[:key=value,...]``) on cpu-host at ``depths x widths`` (decode) by the paired
    protocol into a fresh root (removed afterwards); ``base`` holds the device spec and the TVM tuning
    database (reused, so a tuned flow is not tuned again)."""
    root = spec_only_root(base, prefix)
    name, opts = parse_flow_spec(spec)
    if name == "tvm":
        opts.setdefault("tuning_dir", str(base / "cpu-host" / "tvm_tuning" / f"t{opts.get('trials', 0)}"))
    try:
        load0 = loadavg()
        plan = make_plan("cpu-host", name, MODEL, depths, widths, ("decode",), prompt_len, "float32", threads,
                         measure_cfg=mcfg, options=opts)
        r = run_profile(plan, root)
        table = LatencyTable("cpu-host", name, MODEL, root)
        variant = r.rows[0]["variant"]
        rows = table.corrected(table.rows(phase="decode", variant=variant, source="measured"))
        [level] = table.reference_levels().values()
        return FlowRun(plan, variant, rows, level, r.written, r.seconds, load0, loadavg())
    finally:
        shutil.rmtree(root, ignore_errors=True)
