"""Set-up and scoring helpers of benchmarks/search_efficiency.py: the tiny ``--quick`` strategy and table, the
latency table check (profiling a sparse one when absent), and what a replayed method spent: tokens to the
target, per-rung spending, and the oracle's floor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from search.problem import SearchProblem

REPO = Path(__file__).resolve().parents[1]


def quick_setup(work: Path) -> tuple[Path, Path]:
    """A real tiny strategy and a real cpu-host PyTorch decode table of `tiny` (seconds)."""
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy
    from profiler.device import detect_host, save_device
    from profiler.measure import MeasureConfig
    from profiler.plan import make_plan, run_profile

    root = work / "profiles"
    strategy = work / "strategy.yaml"
    if not (root / "cpu-host" / "pytorch-tiny.parquet").exists():
        save_device(detect_host(threads=1), root)
        fast = MeasureConfig(warmup=1, min_repeats=3, max_repeats=5, max_seconds=0.2, rel_ci=0.1, rounds=1,
                             min_seconds=0)
        plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode", "prefill"), 16,
                         "float32", 1, measure_cfg=fast)
        run_profile(plan, root)
    if not strategy.exists():
        m = load_model("tiny")
        Strategy.trivial(m.geometry, m.fingerprint, "tiny", widths=(1.0, 0.75, 0.5)).save(strategy)
    return strategy, root


def ensure_table(device: str, flow: str, model: str, phase: str, depths: tuple[int, ...],
                 widths: tuple[float, ...], root: Path | None) -> str:
    """'present', or profile a sparse table (decode) and say so."""
    from amoeba_core.errors import AmoebaError
    from search.latency import LatencyObjective

    try:
        lat = LatencyObjective(device, flow, model, phase, root=root)
        m = lat.parts[0][0]
        rows = m.table.rows(phase=phase, variant=m.variant) if m.table is not None else None
        if rows is None or rows.empty:
            return f"present ({m.variant}; no measured rows)"
        desc = (f"present: {len(rows)} measured {phase} rows of variant {m.variant} (depths "
                f"{sorted(int(d) for d in rows['depth'].unique())}, widths {sorted(float(w) for w in rows['width'].unique())}")
        for col in ("threads", "protocol"):
            if col in rows:
                desc += f", {col} {sorted(str(v) for v in rows[col].dropna().unique())}"
        used = f"; rows timed with {m.threads} thread(s) used" if m.threads is not None else ""
        return desc + f"){used}; other shapes from its predictor"
    except AmoebaError as e:
        if device != "cpu-host":
            raise
        print(f"no {device}/{flow} {phase} table for {model} ({e}); profiling a sparse one", flush=True)
    cmd = [sys.executable, "-m", "amoeba", "profile", "--device", device, "--flow", flow, "--model", model,
           "--depths", ",".join(map(str, depths)), "--widths", ",".join(f"{w:g}" for w in widths),
           "--phases", phase, "--sparse", "--threads", os.environ.get("AMOEBA_THREADS", "2")]
    if root is not None:
        cmd += ["--root", str(root)]
    subprocess.run(cmd, check=True, cwd=REPO)
    return "profiled here (sparse: " + " ".join(cmd[3:]) + ")"


def first_reach(problem: SearchProblem, ref: tuple[float, float], target: float) -> int | None:
    """Tokens spent when the front of the problem's full-budget shapes first reaches ``target``."""
    from search.pareto import hypervolume

    lat: list[float] = []
    acc: list[float] = []
    for tokens, ev in problem.events:
        if ev is None:
            continue
        lat.append(ev.latency_ms)
        acc.append(ev.accuracy)
        if hypervolume(lat, acc, *ref) >= target:
            return tokens
    return None


def spending(problem: SearchProblem, until: int | None, exhaustive_tokens: int,
             front: set[str]) -> list[dict[str, Any]] | None:
    """Where a multi-fidelity method's tokens went up to ``until`` (its first reach of the target):
    per rung, the shapes that reached it (and how many of them are on the exhaustive front, keys
    ``front``) and the tokens spent raising shapes to it."""
    mf = problem.fidelity
    if mf is None or until is None:
        return None
    shapes = [set() for _ in mf.rungs]
    tokens = [0] * len(mf.rungs)
    for (spent, _), (key, rung, cost) in zip(problem.events, problem.steps):
        if spent > until:
            break
        shapes[rung].add(key)
        tokens[rung] += cost
    return [{"windows": n, "shapes": len(shapes[r]), "on_true_front": len(shapes[r] & front), "tokens": tokens[r],
             "fraction": tokens[r] / exhaustive_tokens} for r, n in enumerate(mf.rungs)]


def oracle_shapes(L: list[float], A: list[float], ref: tuple[float, float], target: float) -> int:
    """Fewest shapes, picked greedily by hypervolume gain knowing every score, to reach ``target``."""
    from search.pareto import hypervolume

    chosen: list[int] = []
    left = set(range(len(L)))
    while left:
        def hv_with(i: int) -> float:
            idx = chosen + [i]
            return hypervolume([L[j] for j in idx], [A[j] for j in idx], *ref)

        best = max(left, key=hv_with)
        chosen.append(best)
        left.discard(best)
        if hv_with(best) >= target:
            break
    return len(chosen)
