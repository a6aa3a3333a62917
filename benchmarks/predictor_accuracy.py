"""How well does the latency predictor reproduce measured shapes it was not fitted on?

For each flow measured here (``--flows``, default pytorch) the script times a grid of the
smollm2-135m geometry on cpu-host (depths 3..30 step 3 x widths 1, 7/8, 3/4, 5/8, prefill and
decode; rows already in the table are reused), fits the predictor on the sparse plan's depths
(shallowest, middle, deepest = 30% of the grid) and reports the share of the other 70% within
±5% and ±10% of their measured median, with the measurement noise (p90/p10 of each row's
samples) beside it. It then runs per-layer mode (whole models of depth 1, 2, 4 -> composed
depths) and reports the composition error against the whole-model measurements.

Every other table found under the profiles root (any flow, e.g. llama.cpp, ONNX Runtime) is
evaluated the same way from its own measured rows, without timing anything.

    python benchmarks/predictor_accuracy.py            # full (quiet machine: a few minutes)
    python benchmarks/predictor_accuracy.py --quick    # smoke run into a temporary root
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from profiler.device import profiles_root, spec_only_root  # noqa: E402
from profiler.flows import parse_flow_spec, split_flow_specs  # noqa: E402
from profiler.lookup import list_tables  # noqa: E402
from profiler.measure import QUICK, MeasureConfig  # noqa: E402
from profiler.plan import make_plan, run_profile  # noqa: E402
from profiler.predict import LatencyPredictor, sparse_depths  # noqa: E402
from profiler.table import LatencyTable  # noqa: E402

MODEL = "smollm2-135m"


def evaluate(rows: pd.DataFrame, geometry: object) -> dict | None:
    """Fit on the sparse depths of ``rows`` (one variant/phase/prompt_len), test on the rest."""
    depths = sorted(set(rows["depth"].astype(int)))
    if len(depths) < 4:
        return None
    fit_d = sparse_depths(depths)
    fit, held = rows[rows["depth"].isin(fit_d)], rows[~rows["depth"].isin(fit_d)]
    pred = LatencyPredictor.fit(fit, geometry)  # type: ignore[arg-type]
    err = pred.holdout_errors(held)
    a = err["rel_error"].abs()
    noise = rows["p90_ms"] / rows["p10_ms"]
    return {
        "fit_depths": list(fit_d),
        "n_fit": len(fit),
        "n_heldout": len(held),
        "fraction_measured": round(len(fit) / len(rows), 3),
        "within_5pct": round(float((a <= 0.05).mean()), 3),
        "within_10pct": round(float((a <= 0.10).mean()), 3),
        "median_abs_error": round(float(a.median()), 4),
        "max_abs_error": round(float(a.max()), 4),
        "noise_p90_over_p10_median": round(float(noise.median()), 3),
        "noise_p90_over_p10_max": round(float(noise.max()), 3),
        "contended_rows": int((rows["discarded"] >= rows["n"]).sum()),
        "worst": err.loc[a.idxmax(), ["depth", "width", "p50_ms", "predicted_ms"]].to_dict(),
    }


def composition_error(table: LatencyTable) -> list[dict]:
    out = []
    df = table.df
    for (variant, phase, p), grp in df.groupby(["variant", "phase", "prompt_len"]):
        m = grp[grp.source == "measured"].set_index(["depth", "width"])["p50_ms"]
        c = grp[grp.source == "per-layer"].set_index(["depth", "width"])["p50_ms"]
        both = m.index.intersection(c.index)
        both = [k for k in both if k[0] > 4]  # depths 1, 2, 4 are the inputs of the composition
        if not both:
            continue
        rel = np.array([c[k] / m[k] - 1 for k in both])
        out.append(
            {
                "variant": variant,
                "phase": phase,
                "prompt_len": int(p),
                "n": len(both),
                "within_5pct": round(float((np.abs(rel) <= 0.05).mean()), 3),
                "within_10pct": round(float((np.abs(rel) <= 0.10).mean()), 3),
                "median_abs_error": round(float(np.median(np.abs(rel))), 4),
                "max_abs_error": round(float(np.abs(rel).max()), 4),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grid, few repeats, temporary root")
    ap.add_argument("--flows", default="pytorch",
                    help="flows to time here, ';'-separated flow[:key=value,...], e.g. "
                         "'pytorch;llamacpp:quant=q8_0;tvm:trials=32' (other tables: evaluated as they are)")
    ap.add_argument("--phases", default="prefill,decode")
    ap.add_argument(
        "--root", type=Path, default=None, help="profiles root (default $AMOEBA_PROFILES or ./device_profiles)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predictor_accuracy.json")
    args = ap.parse_args()

    root = spec_only_root(args.root, "amoeba-pa-") if args.quick else profiles_root(args.root)
    depths = (3, 12, 21, 30) if args.quick else tuple(range(3, 31, 3))
    widths = (1.0, 0.75) if args.quick else (1.0, 0.875, 0.75, 0.625)
    mcfg = QUICK if args.quick else MeasureConfig()
    t0 = time.perf_counter()
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    for spec in split_flow_specs(args.flows):
        flow, opts = parse_flow_spec(spec)
        for per_layer in (False, True):  # the whole grid, then depth 1/2/4 models composed
            plan = make_plan("cpu-host", flow, MODEL, depths, widths, phases, args.prompt_len,
                             "float32", args.threads, per_layer=per_layer, measure_cfg=mcfg, options=opts)
            r = run_profile(plan, root)
            if per_layer:
                print(f"{spec}: per-layer {r.written} rows measured, {r.composed} composed ({r.seconds:.0f} s)")
            else:
                print(f"{spec}: grid {r.written} rows measured, {r.skipped} reused ({r.seconds:.0f} s)")

    results = []
    for info in list_tables(root):
        if info.device != "cpu-host":
            continue
        table = LatencyTable(info.device, info.flow, info.model, root)
        from amoeba_core.shape import ModelGeometry

        geometry = ModelGeometry(**table.header["geometry"]) if "geometry" in table.header else None
        measured = table.df[(table.df.source == "measured") & (table.df.batch == 1)]
        for (variant, phase, p), grp in measured.groupby(["variant", "phase", "prompt_len"]):
            # the benchmark grid only: depths 1, 2, 4 are the per-layer mode's inputs
            grid = grp[grp.depth.isin(depths)] if info.model == MODEL else grp
            ev = evaluate(grid, geometry)
            if ev is None:
                continue
            results.append(
                {
                    "device": info.device,
                    "flow": info.flow,
                    "model": info.model,
                    "variant": variant,
                    "phase": phase,
                    "prompt_len": int(p),
                    **ev,
                }
            )
        comp = composition_error(table)
        for c in comp:
            c.update(device=info.device, flow=info.flow, model=info.model)
        results_comp = comp
        for c in results_comp:
            results.append({"kind": "per-layer composition vs whole model", **c})

    print()
    print(
        f"{'flow':12} {'model':13} {'variant':9} {'phase':8} {'measured':>8} {'±5%':>6} {'±10%':>6} {'med err':>8} "
        f"{'max err':>8} {'noise p90/p10':>13} {'contended':>9}"
    )
    for r in results:
        if "kind" in r:
            continue
        print(
            f"{r['flow']:12} {r['model']:13} {r['variant']:9} {r['phase']:8} {100 * r['fraction_measured']:7.0f}% "
            f"{100 * r['within_5pct']:5.0f}% {100 * r['within_10pct']:5.0f}% {100 * r['median_abs_error']:7.1f}% "
            f"{100 * r['max_abs_error']:7.1f}% {r['noise_p90_over_p10_median']:13.3f} "
            f"{r['contended_rows']:4d}/{r['n_fit'] + r['n_heldout']}"
        )
    print("\nper-layer composition (depth 1/2/4 whole models -> deeper) vs whole-model measurement:")
    for r in results:
        if "kind" in r:
            print(
                f"{r['flow']:12} {r['model']:13} {r['variant']:9} {r['phase']:8} n={r['n']:3d}  "
                f"±5%: {100 * r['within_5pct']:.0f}%  "
                f"±10%: {100 * r['within_10pct']:.0f}%  median {100 * r['median_abs_error']:.1f}%  "
                f"max {100 * r['max_abs_error']:.1f}%"
            )
    out = {
        "quick": args.quick,
        "root": str(root),
        "model": MODEL,
        "depths": list(depths),
        "widths": list(widths),
        "prompt_len": args.prompt_len,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - t0, 1),
        "target": "≥95% of held-out shapes within ±5% with ≤30% of the grid measured",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
