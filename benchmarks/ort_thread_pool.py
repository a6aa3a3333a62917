"""ONNX Runtime under the paired protocol: per-session thread pools vs one process-wide pool, side by side.

The paired protocol alternates sessions sample by sample. With ORT's default per-session intra-op
pools every session owns threads that spin after each run; with one process-wide pool (what
profiler/flows/onnxruntime.py now uses) they share threads. This script loads the same four
SmolLM2-shaped decode sessions (d30/d24/d18 at w1, d24-w0.75; 2 threads, prompt 128) in both
configurations in one process and, ``--rounds`` times, alternates the two configurations: a block
of the four sessions interleaved sample by sample, per configuration, then each session alone.
Reported per configuration and shape: median ms interleaved and alone with a 90% bootstrap
interval over the blocks, and the interleaved ratio to d30-w1; the load average before and after.

    python benchmarks/ort_thread_pool.py
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.shape import ModelGeometry  # noqa: E402
from amoeba_core.stats import median_ci  # noqa: E402
from profiler.flows import make_flow  # noqa: E402
from profiler.flows.base import FlowConfig, Workload  # noqa: E402

from benchmarks._profile_run import loadavg  # noqa: E402

SHAPES = [(30, 1.0), (24, 1.0), (18, 1.0), (24, 0.75)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--samples", type=int, default=15, help="samples per session per block")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ort_thread_pool.json")
    args = ap.parse_args()
    import onnxruntime as ort

    from profiler.flows import onnxruntime as ortflow

    load0, t0 = loadavg(), time.perf_counter()
    g = ModelGeometry.preset("smollm2-135m")
    w = Workload("decode", 128)
    shared = make_flow("onnxruntime", FlowConfig(threads=args.threads))  # the flow as it is: one pool
    own = make_flow("onnxruntime", FlowConfig(threads=args.threads))

    def per_session(path: Path) -> object:  # the flow before the fix: ORT's default per-session pool
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    own._session = per_session  # type: ignore[method-assign]
    # per-session sessions first: once the process-wide pool exists ORT refuses per-session pools
    configs = {"per_session_pools": own, "shared_pool": shared}
    arts = {c: {s: f.build(g.scaled_dims(*s)) for s in SHAPES} for c, f in configs.items()}
    assert ortflow._POOL.get("threads") == args.threads, "the shared pool was not created"  # noqa: SLF001
    for c, f in configs.items():  # warm-up
        for a in arts[c].values():
            for _ in range(3):
                f.run_once(a, w)
    blocks = {c: {"interleaved": {s: [] for s in SHAPES}, "alone": {s: [] for s in SHAPES}} for c in configs}
    for r in range(args.rounds):
        for c, f in configs.items():
            xs = {s: [] for s in SHAPES}
            for _ in range(args.samples):
                for s in SHAPES:
                    xs[s].append(f.run_once(arts[c][s], w) * 1e3)
            for s in SHAPES:
                blocks[c]["interleaved"][s].append(st.median(xs[s]))
                blocks[c]["alone"][s].append(st.median(f.run_once(arts[c][s], w) * 1e3 for _ in range(args.samples)))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{c} d30-w1 {blocks[c]['interleaved'][SHAPES[0]][-1]:.1f} ms interleaved, "
            f"{blocks[c]['alone'][SHAPES[0]][-1]:.1f} alone" for c in configs), flush=True)

    def ci(xs: list[float]) -> list[float]:
        i = median_ci(xs)
        return [round(i.value, 3), round(i.lo, 3), round(i.hi, 3)]

    out: dict = {}
    for c in configs:
        ref = blocks[c]["interleaved"][SHAPES[0]]
        out[c] = {f"d{d}-w{x:.3f}": {
            "interleaved_ms_median_lo_hi": ci(blocks[c]["interleaved"][(d, x)]),
            "alone_ms_median_lo_hi": ci(blocks[c]["alone"][(d, x)]),
            "interleaved_ratio_to_d30_median_lo_hi": ci([a / b for a, b in zip(blocks[c]["interleaved"][(d, x)], ref)]),
        } for d, x in SHAPES}
    result = {"command": "python benchmarks/ort_thread_pool.py", "threads": args.threads, "rounds": args.rounds,
              "samples_per_block": args.samples, "onnxruntime": ort.__version__,
              "interval": "90% bootstrap of the median over rounds (amoeba_core.stats.median_ci)",
              "loadavg_before": load0, "loadavg_after": loadavg(), "seconds": round(time.perf_counter() - t0, 1),
              "results": out}
    args.out.write_text(json.dumps(result, indent=2))
    for c in configs:
        d30 = out[c]["d30-w1.000"]
        print(f"{c}: d30-w1 interleaved {d30['interleaved_ms_median_lo_hi']} ms, alone {d30['alone_ms_median_lo_hi']} ms")
    print(f"-> {args.out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
