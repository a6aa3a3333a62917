"""How reproducible is a latency row? The same grid timed in independent runs, compared.

The predictor cannot be more accurate than the measurements it is checked against. This script
times one grid of the smollm2-135m geometry through each flow of ``--flows`` in ``--runs``
independent runs (each into a fresh temporary profiles root, so nothing is reused; the flows'
artifact caches, e.g. GGUF files, ONNX exports and the TVM tuning database, are shared) and
reports, per flow, how far a row's median moves between runs: the noise floor under the
predictor's ±5% target (benchmarks/predictor_accuracy.py).

    python benchmarks/reproducibility.py [--flows "pytorch;llamacpp:quant=q8_0"] [--runs 2] [--gap 60]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.errors import AmoebaError  # noqa: E402
from profiler.device import profiles_root, spec_only_root  # noqa: E402
from profiler.flows import flow_class, parse_flow_spec, split_flow_specs  # noqa: E402
from profiler.measure import MeasureConfig  # noqa: E402
from profiler.plan import make_plan, run_profile  # noqa: E402
from profiler.table import LatencyTable  # noqa: E402

MODEL = "smollm2-135m"
FLOWS = "pytorch;onnxruntime;llamacpp:quant=f16;llamacpp:quant=q8_0;llamacpp:quant=q4_0;tvm:trials=32"


def one_run(specs: list[str], depths: tuple[int, ...], widths: tuple[float, ...], threads: int,
            base: Path, mcfg: MeasureConfig) -> dict[str, dict[str, float]]:
    root = spec_only_root(base, "amoeba-repro-")
    try:
        out: dict[str, dict[str, float]] = {}
        for spec in specs:
            name, opts = parse_flow_spec(spec)
            if name == "tvm":  # keep using the tuned database instead of tuning again
                opts.setdefault("tuning_dir", str(base / "cpu-host" / "tvm_tuning" / f"t{opts.get('trials', 0)}"))
            plan = make_plan("cpu-host", name, MODEL, depths, widths, ("decode",), 128, "float32", threads,
                             measure_cfg=mcfg, options=opts)
            r = run_profile(plan, root)
            variant = r.rows[0]["variant"] if r.rows else None
            rows = LatencyTable("cpu-host", name, MODEL, root).rows(phase="decode", variant=variant)
            out[spec] = {f"d{int(d)}-w{float(w):.3f}": float(ms)
                         for d, w, ms in zip(rows.depth, rows.width, rows.p50_ms)}
            print(f"  {spec}: {r.written} rows in {r.seconds:.0f} s")
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flows", default=FLOWS, help="';'-separated flow[:key=value,...]")
    ap.add_argument("--depths", default="6,12,18,24,30")
    ap.add_argument("--widths", default="1,0.875,0.75,0.625")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--gap", type=float, default=0.0, help="seconds to wait between runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=None, help="timed seconds per row at least (protocol default)")
    ap.add_argument("--root", type=Path, default=None, help="where cpu-host/device.yaml (and TVM tuning) live")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reproducibility.json")
    args = ap.parse_args()
    if args.runs < 2:
        raise SystemExit("error: --runs must be >= 2")
    base = profiles_root(args.root)
    if not (base / "cpu-host" / "device.yaml").is_file():
        raise SystemExit(f"error: no {base}/cpu-host/device.yaml; run `amoeba profile` once first")
    specs = []
    for spec in split_flow_specs(args.flows):
        try:
            flow_class(parse_flow_spec(spec)[0]).check_available()
            specs.append(spec)
        except AmoebaError as e:
            print(f"{spec}: skipped ({e})")
    depths = tuple(int(d) for d in args.depths.split(","))
    widths = tuple(float(w) for w in args.widths.split(","))
    mcfg = MeasureConfig() if args.min_seconds is None else MeasureConfig(min_seconds=args.min_seconds)
    t0 = time.perf_counter()
    runs = []
    for i in range(args.runs):
        if i and args.gap:
            time.sleep(args.gap)
        print(f"run {i + 1}/{args.runs}")
        runs.append(one_run(specs, depths, widths, args.threads, base, mcfg))
    results = []
    for spec in specs:
        diffs = []
        for a, b in itertools.combinations(runs, 2):
            keys = sorted(set(a[spec]) & set(b[spec]))
            diffs += [abs(b[spec][k] / a[spec][k] - 1) for k in keys]
        d = np.asarray(diffs)
        results.append({"flow": spec, "rows": len(runs[0][spec]), "pairs": len(d),
                        "median_abs_change": round(float(np.median(d)), 4),
                        "p90_abs_change": round(float(np.quantile(d, 0.9)), 4),
                        "max_abs_change": round(float(d.max()), 4),
                        "within_5pct": round(float((d <= 0.05).mean()), 3),
                        "runs_ms": [r[spec] for r in runs]})
    print(f"\n{'flow':22} {'rows':>4} {'within ±5%':>10} {'median':>7} {'p90':>6} {'max':>6}   (|run j / run i - 1|)")
    for r in results:
        print(f"{r['flow']:22} {r['rows']:4d} {100 * r['within_5pct']:9.0f}% {100 * r['median_abs_change']:6.1f}% "
              f"{100 * r['p90_abs_change']:5.1f}% {100 * r['max_abs_change']:5.1f}%")
    out = {"model": MODEL, "phase": "decode", "prompt_len": 128, "threads": args.threads, "depths": list(depths),
           "min_seconds": mcfg.min_seconds, "rounds": mcfg.rounds,
           "widths": list(widths), "runs": args.runs, "gap_s": args.gap,
           "seconds": round(time.perf_counter() - t0, 1), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
