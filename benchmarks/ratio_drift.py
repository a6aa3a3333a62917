"""Does a shape's ratio to the full-size reference stay put while the host's speed moves?

The paired protocol (profiler/measure.py) stores each row as a ratio to a reference timed beside it,
which divides the host's drift out *if* the host slows every shape by the same factor. This script
checks that assumption per flow, in one process per flow: the smollm2-135m geometry's full-size
reference (d30-w1) and two smaller shapes (d30-w0.625, d18-w0.75) are timed interleaved call by call
(decode, prompt 128, 2 threads) in ``--segments`` segments of ``--seconds`` each; every other segment
a competitor process runs beside them (a busy loop at 50% duty on one core: a stand-in for a
neighbour on a shared host). Per segment: the reference's median ms and each shape's paired ratio
(median of the call-by-call ratios). Reported per flow and shape:

- ``quiet_ratio_range``: (max - min) / mean of the ratio over the quiet segments, i.e. how far the
  ratio moves while nothing of ours changes (the host's own drift);
- ``competitor_ratio_shift``: mean ratio with the competitor / mean ratio without, minus 1;
- beside them the reference level's range over the quiet segments and its shift with the competitor.

A flow whose ratios move by more than a few percent when its level moves cannot meet ±5% between
runs on a drifting host by pairing alone (benchmarks/reproducibility.py measures that directly).

    python benchmarks/ratio_drift.py [--flows "pytorch;onnxruntime;tvm:trials=32"] [--segments 8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._profile_run import MODEL, loadavg, run_isolated  # noqa: E402

SHAPES = ((30, 1.0), (30, 0.625), (18, 0.75))  # the reference first
COMPETITOR = ("import time\nwhile True:\n    t = time.perf_counter()\n    while time.perf_counter() - t < 0.005:\n"
              "        pass\n    time.sleep(0.005)\n")


def _segments(spec: str, segments: int, seconds: float, threads: int) -> dict:
    """Build the shapes through ``spec``'s flow and time them (in a child process: run_isolated)."""
    import numpy as np

    from amoeba_core.shape import ModelGeometry
    from profiler.flows import FlowConfig, Workload, flow_class, parse_flow_spec

    name, opts = parse_flow_spec(spec)
    flow = flow_class(name)(FlowConfig(threads=threads, options=opts))
    geometry = ModelGeometry.resolve(MODEL)
    t0 = time.perf_counter()
    arts = [flow.build(geometry.scaled_dims(d, w)) for d, w in SHAPES]
    build_s = time.perf_counter() - t0
    work = Workload("decode", 128)
    for a in arts:  # warm-up, untimed
        for _ in range(5):
            flow.run_once(a, work)
    out = []
    for seg in range(segments):
        competitor = seg % 2 == 1
        proc = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if competitor else None
        try:
            t, times = time.perf_counter(), [[] for _ in arts]
            while time.perf_counter() - t < seconds:
                for i, a in enumerate(arts):
                    times[i].append(flow.run_once(a, work))
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
        s = np.asarray(times)
        out.append({"competitor": competitor, "calls": int(s.shape[1]),
                    "ref_ms": round(float(np.median(s[0])) * 1e3, 3),
                    "ratios": [round(float(np.median(s[i] / s[0])), 5) for i in range(1, len(arts))],
                    "loadavg": loadavg()})
        kind = "competitor" if competitor else "quiet"
        print(f"  {spec} segment {seg} ({kind}): reference {out[-1]['ref_ms']:.2f} ms, "
              f"ratios {out[-1]['ratios']}", flush=True)
    for a in arts:
        flow.close(a)
    return {"build_seconds": round(build_s, 1), "segments": out}


def summarise(segs: list[dict]) -> dict:
    import numpy as np

    quiet = [s for s in segs if not s["competitor"]]
    busy = [s for s in segs if s["competitor"]]

    def rng(v: list[float]) -> float:
        return round(float((max(v) - min(v)) / np.mean(v)), 4)

    def shift(a: list[float], b: list[float]) -> float | None:
        return round(float(np.mean(b) / np.mean(a) - 1), 4) if a and b else None

    lv_q, lv_b = [s["ref_ms"] for s in quiet], [s["ref_ms"] for s in busy]
    shapes = {}
    for i, (d, w) in enumerate(SHAPES[1:]):
        rq, rb = [s["ratios"][i] for s in quiet], [s["ratios"][i] for s in busy]
        shapes[f"d{d}-w{w:.3f}"] = {"quiet_ratio_range": rng(rq), "competitor_ratio_shift": shift(rq, rb)}
    return {"quiet_level_range": rng(lv_q), "competitor_level_shift": shift(lv_q, lv_b), "shapes": shapes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", default="pytorch;onnxruntime;tvm:trials=32", help="flow specs separated by ';'")
    ap.add_argument("--segments", type=int, default=8, help="segments per flow, every other one with the competitor")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of a segment")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ratio_drift.json")
    args = ap.parse_args()
    if args.segments < 2 or args.seconds <= 0:
        raise SystemExit("error: need --segments >= 2 and --seconds > 0")
    t0, load0 = time.perf_counter(), loadavg()
    results = []
    for spec in [s.strip() for s in args.flows.split(";") if s.strip()]:
        try:
            r = run_isolated(_segments, spec, args.segments, args.seconds, args.threads)
        except Exception as e:  # noqa: BLE001 - a flow that is not installed is reported, not fatal
            print(f"  {spec}: {e}", flush=True)
            results.append({"flow": spec, "status": f"error: {e}"})
            continue
        s = summarise(r["segments"])
        results.append({"flow": spec, "status": "measured", **s, **r})
        print(f"{spec}: quiet level range {s['quiet_level_range']:.1%}, competitor level shift "
              f"{s['competitor_level_shift']:+.1%}; " + "; ".join(
                  f"{k} ratio range {v['quiet_ratio_range']:.1%}, shift {v['competitor_ratio_shift']:+.1%}"
                  for k, v in s["shapes"].items()), flush=True)
    out = {"benchmark": "ratio_drift",
           "command": " ".join(["python", "benchmarks/ratio_drift.py", *(shlex.quote(a) for a in sys.argv[1:])]),
           "model": MODEL, "phase": "decode", "prompt_len": 128, "threads": args.threads,
           "shapes": [f"d{d}-w{w:.3f}" for d, w in SHAPES], "reference": "d30-w1.000",
           "segments": args.segments, "seconds": args.seconds,
           "env": {k: v for k, v in os.environ.items() if k.startswith(("TVM_", "OMP_", "MKL_", "ORT_"))},
           "competitor": "python busy loop, 5 ms on / 5 ms asleep, one process (every other segment)",
           "results": results, "loadavg_before": load0, "loadavg_after": loadavg(),
           "wall_seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
