"""Per-layer composition for LLaMA2-7B-sized layers, checked against whole models that fit.

Per-layer mode (``amoeba profile --per-layer``) times whole models of depth 1, 2 and 4 and
composes deeper ones as ``t0 + depth * slope``. On SmolLM2 that check is unfair to llama.cpp
(its small layers fit the host's 32 MiB L3, so latency is not linear in depth); a
LLaMA2-7B layer is 200-800 MB, so streaming from DRAM dominates and composition should hold.
This script times whole llama2-7b-shaped models of depth 8 and 16 (llama.cpp f16: 3.5 / 7 GB
files; PyTorch fp32 depth 8 only: 7.5 GB in RAM) and compares them with the composition from
the same table's depth-1/2/4 rows (run ``benchmarks/roofline_ratio.py`` first, or this script
times them too). Rows are measured with the profiler's default protocol (3 interleaved rounds).

    python benchmarks/per_layer_check.py [--flows llamacpp,pytorch] [--widths 1,0.75]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from profiler.device import profiles_root  # noqa: E402
from profiler.measure import MeasureConfig  # noqa: E402
from profiler.plan import make_plan, run_profile  # noqa: E402
from profiler.predict import fit_line, per_layer_depths  # noqa: E402
from profiler.table import LatencyTable  # noqa: E402

MODEL = "llama2-7b"
WHOLE = {"llamacpp": (8, 16), "pytorch": (8,)}  # what fits in this host's 24 GiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flows", default="llamacpp,pytorch")
    ap.add_argument("--widths", default="1,0.75")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "per_layer_check.json")
    args = ap.parse_args()
    root = profiles_root(args.root)
    widths = tuple(float(w) for w in args.widths.split(","))
    t_start = time.perf_counter()
    results = []
    for flow in [f.strip() for f in args.flows.split(",") if f.strip()]:
        small = per_layer_depths(32)
        for depths, per_layer in ((small, True), (WHOLE[flow], False)):
            plan = make_plan("cpu-host", flow, MODEL, depths, widths, ("decode",), args.prompt_len, "float32",
                             args.threads, per_layer=per_layer, measure_cfg=MeasureConfig())
            r = run_profile(plan, root)
            print(f"{flow} depths {depths}: {r.written} rows measured, {r.skipped} reused ({r.seconds:.0f} s)")
        table = LatencyTable("cpu-host", flow, MODEL, root)
        rows = table.rows(phase="decode", prompt_len=args.prompt_len, source="measured")
        for w in widths:
            at_w = rows[rows["width"].round(3) == round(w, 3)]
            for variant in sorted(set(at_w["variant"])):
                v = at_w[at_w["variant"] == variant]
                base = v[v["depth"].isin(small)]
                t0, slope = fit_line(base["depth"], base["p50_ms"])
                for d in WHOLE[flow]:
                    whole = v[v["depth"] == d]
                    if whole.empty:
                        continue
                    meas = float(whole["p50_ms"].iloc[0])
                    comp = t0 + d * slope
                    results.append({
                        "flow": flow, "variant": variant, "depth": d, "width": w,
                        "whole_model_ms": round(meas, 2), "composed_ms": round(comp, 2),
                        "rel_error": round(comp / meas - 1, 4),
                        "whole_p10_p90_ms": [round(float(whole["p10_ms"].iloc[0]), 2),
                                             round(float(whole["p90_ms"].iloc[0]), 2)],
                        "inputs_ms": {int(d_): round(float(x), 2) for d_, x in zip(base["depth"], base["p50_ms"])},
                    })
    print(f"\n{'flow':9} {'variant':8} {'shape':11} {'whole':>9} {'composed':>9} {'error':>7}")
    for r in results:
        print(f"{r['flow']:9} {r['variant']:8} d{r['depth']}-w{r['width']:.3f} {r['whole_model_ms']:8.1f}  "
              f"{r['composed_ms']:8.1f}  {r['rel_error']:+6.1%}")
    out = {"model": MODEL, "prompt_len": args.prompt_len, "threads": args.threads, "root": str(root),
           "seconds": round(time.perf_counter() - t_start, 1), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
