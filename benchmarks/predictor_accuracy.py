"""How well does the latency predictor hold on shapes it never saw, measured in the same run?

For each CPU flow of ``--flows`` one paired-protocol profile run (into a fresh temporary root:
nothing reused) times the smollm2-135m geometry at depths 6/9/18/21/27/30 x widths
1/0.875/0.8125/0.75/0.6875/0.625 (decode, prompt 128, 2 threads, the protocol's defaults). The
predictor is fitted on the sparse plan's shapes only (depths 6/18/30 x widths 1/0.875/0.75/0.625:
12 shapes, drift-corrected milliseconds ``ratio * reference level``) and scored on the other 24,
which the fit never saw (``offgrid``): depths 9/21/27 at every width, and the widths 0.8125 and
0.6875 at every depth. Measured and predicted values come from the same run, against the same
reference, so the score is the predictor's error, not the host's drift between two runs.

Reported per flow: ``offgrid_within_5pct`` (goal ≥ 0.95) and ``_10pct``, median/max error, the
share of measured values inside the predicted 90% interval, the same split into held-out depths
and held-out widths, and the host's noise during the run (the reference level's block spread,
the load average before and after).

    python benchmarks/predictor_accuracy.py [--flows "pytorch;llamacpp:quant=q4_0"]
    python benchmarks/predictor_accuracy.py --quick    # smoke run: tiny grid, few repeats
    python benchmarks/predictor_accuracy.py --flows onnxruntime --no-rebuild --merge   # force paired-v1

Each flow is timed with its own default protocol (ONNX Runtime and llama.cpp rebuild every
artifact between rounds, ``paired-v2``); with ``--merge`` a flow's result under the other protocol
is kept beside the new one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.errors import AmoebaError  # noqa: E402
from profiler.device import profiles_root  # noqa: E402
from profiler.flows import flow_class, parse_flow_spec, split_flow_specs  # noqa: E402
from profiler.measure import QUICK, MeasureConfig  # noqa: E402
from profiler.plan import measure_config_for  # noqa: E402
from profiler.predict import LatencyPredictor  # noqa: E402

from benchmarks._profile_run import MODEL, profile_flow, run_isolated  # noqa: E402
FLOWS = "pytorch;llamacpp:quant=f16;llamacpp:quant=q4_0;onnxruntime"
FIT_DEPTHS = (6, 18, 30)
FIT_WIDTHS = (1.0, 0.875, 0.75, 0.625)
OFF_DEPTHS = (9, 21, 27)
OFF_WIDTHS = (0.8125, 0.6875)


def score(err: pd.DataFrame) -> dict:
    a = err["rel_error"].abs()
    if a.empty:
        return {"n": 0}
    return {
        "n": len(a),
        "within_5pct": round(float((a <= 0.05).mean()), 3),
        "within_10pct": round(float((a <= 0.10).mean()), 3),
        "median_abs_error": round(float(a.median()), 4),
        "max_abs_error": round(float(a.max()), 4),
        "in_predicted_interval": round(float(err["in_interval"].mean()), 3),
        "predicted_interval_half_width_median": round(
            float(((err["predicted_hi_ms"] - err["predicted_lo_ms"]) / (2 * err["predicted_ms"])).median()), 4),
    }


def evaluate(rows: pd.DataFrame, geometry: object, fit_depths: tuple[int, ...], fit_widths: tuple[float, ...]) -> dict:
    """Fit on the sparse shapes of ``rows`` (drift-corrected), score every other row."""
    w = rows["width"].round(3)
    in_fit = rows["depth"].isin(fit_depths) & w.isin([round(x, 3) for x in fit_widths])
    pred = LatencyPredictor.fit(rows[in_fit], geometry)  # type: ignore[arg-type]
    held = rows[~in_fit]
    err = pred.holdout_errors(held)
    new_width = ~held["width"].round(3).isin([round(x, 3) for x in fit_widths]).to_numpy()
    worst = err.loc[err["rel_error"].abs().idxmax()]
    return {
        "n_fit": int(in_fit.sum()),
        **{f"offgrid_{k}": v for k, v in score(err).items()},
        "heldout_depths_at_fit_widths": score(err[~new_width]),
        "heldout_widths": score(err[new_width]),
        "worst": {"depth": int(worst.depth), "width": float(worst.width), "measured_ms": round(float(worst.ms), 3),
                  "predicted_ms": round(float(worst.predicted_ms), 3)},
        "rows": [{"depth": int(r.depth), "width": float(r.width), "measured_ms": round(float(r.ms), 3),
                  "predicted_ms": round(float(r.predicted_ms), 3), "lo_ms": round(float(r.predicted_lo_ms), 3),
                  "hi_ms": round(float(r.predicted_hi_ms), 3)} for r in err.itertuples()],
        "predictor": pred.to_dict(),
    }


def one_flow(spec: str, base: Path, depths: tuple[int, ...], widths: tuple[float, ...], fit: tuple, threads: int,
             prompt_len: int, mcfg: MeasureConfig) -> dict:
    run = profile_flow(spec, base, depths, widths, threads, mcfg, prompt_len, prefix="amoeba-pa-")
    rows, level = run.rows, run.level
    ev = evaluate(rows, run.plan.geometry, *fit)
    print(f"{spec}: {run.written} rows in {run.seconds:.0f} s; off-grid ±5% {100 * ev['offgrid_within_5pct']:.0f}% "
          f"(n={ev['offgrid_n']}), ±10% {100 * ev['offgrid_within_10pct']:.0f}%, median error "
          f"{100 * ev['offgrid_median_abs_error']:.1f}%, "
          f"in interval {100 * ev['offgrid_in_predicted_interval']:.0f}%; "
          f"reference drift {100 * level.drift:.1f}%, load {run.loadavg_after}", flush=True)
    return {"flow": spec, "variant": run.variant, "status": "measured", "seconds": round(run.seconds, 1),
            "loadavg_before": run.loadavg_before, "loadavg_after": run.loadavg_after, **run.level_record(),
            "median_ratio_half_width": round(float(((rows.ratio_hi - rows.ratio_lo) / (2 * rows.ratio)).median()), 4),
            **ev}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grid, few repeats (smoke run)")
    ap.add_argument("--flows", default=FLOWS, help="';'-separated flow[:key=value,...]")
    ap.add_argument("--root", type=Path, default=None, help="where device specs (and TVM tuning) live")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predictor_accuracy.json")
    ap.add_argument("--merge", action="store_true", help="keep the results of flows not run now from --out")
    ap.add_argument("--rebuild", action=argparse.BooleanOptionalAction, default=None,
                    help="rebuild every artifact between rounds (protocol paired-v2) or not (paired-v1); "
                         "default: each flow's own (Flow.rebuild_between_rounds)")
    args = ap.parse_args()
    base = profiles_root(args.root)
    if args.quick:
        fit = ((6, 30), (1.0, 0.625))
        depths, widths, mcfg = (6, 18, 30), (1.0, 0.8125, 0.625), QUICK
    else:
        fit = (FIT_DEPTHS, FIT_WIDTHS)
        depths = tuple(sorted(FIT_DEPTHS + OFF_DEPTHS))
        widths = tuple(sorted(FIT_WIDTHS + OFF_WIDTHS, reverse=True))
        mcfg = MeasureConfig(rebuild=args.rebuild)
    t0 = time.perf_counter()

    def protocol(spec: str) -> str:  # the flow's own when --rebuild/--no-rebuild is not given
        return measure_config_for(parse_flow_spec(spec)[0], mcfg).protocol

    results: list[dict] = []
    if args.merge and args.out.is_file():  # keep the other flows' results of an earlier invocation
        now = set(split_flow_specs(args.flows))
        results = [r for r in json.loads(args.out.read_text())["results"]
                   if r.get("flow") not in now or r.get("protocol", "paired-v1") != protocol(r["flow"])]

    def write(complete: bool) -> None:
        out = {"quick": args.quick, "model": MODEL, "phase": "decode", "prompt_len": args.prompt_len,
               "threads": args.threads, "protocol": "per flow, in each result (paired-v2: rebuilt between rounds)", "depths": list(depths), "widths": list(widths),
               "fit_depths": list(fit[0]), "fit_widths": list(fit[1]), "complete": complete,
               "seconds": round(time.perf_counter() - t0, 1),
               "target": "offgrid_within_5pct >= 0.95 per CPU flow (fit on the sparse plan, same run)",
               "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=float))

    for spec in split_flow_specs(args.flows):
        try:
            flow_class(parse_flow_spec(spec)[0]).check_available()
        except AmoebaError as e:
            print(f"{spec}: not installed ({e})")
            results.append({"flow": spec, "status": f"not installed: {e}"})
            continue
        try:
            results.append({**run_isolated(one_flow, spec, base, depths, widths, fit, args.threads, args.prompt_len,
                                           mcfg), "protocol": protocol(spec)})
        except RuntimeError as e:
            print(f"{spec}: failed: {e}", flush=True)
            results.append({"flow": spec, "status": f"failed on this host: {e}"})
        write(False)
    write(True)
    print(f"-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
