"""Do latency rows reproduce? The demo grid timed in independent runs by the paired protocol.

The predictor cannot be more accurate than the measurements it is checked against. This script
times the demo grid of the smollm2-135m geometry (depths 6/12/18/24/30 x widths 1/0.875/0.75/0.625,
decode, prompt 128, 2 threads, the protocol's default rounds) through each flow of ``--flows`` in
``--runs`` independent runs (each into a fresh temporary profiles root, so nothing is reused; the
flows' artifact caches, e.g. GGUF files, ONNX exports and the TVM tuning database, are shared)
and reports per flow, over every pair of runs:

- ``within_5pct_ratio``: share of rows whose ratio-derived milliseconds (``ratio * reference
  level``, each run with its own level) agree within ±5%;
- ``within_5pct_abs``: the same for the rows' raw medians (``p50_ms``), what a table without
  pairing would hold;
- ``within_5pct_ratio_only``: the ratios alone (what two runs agree on when the level is common),
- and per run the reference level with the spread of its block medians (p10/p90: how much the
  host drifted during that run) and the load average before and after (the host's noise).

Flows whose runtime is not installed are reported as such. TVM tuned needs MetaSchedule tuning
first (minutes per width, once per tuning database): ``--tvm-tuned`` adds it.

    python benchmarks/reproducibility.py [--flows "pytorch;llamacpp:quant=q4_0"] [--runs 2] [--tvm-tuned]
                                         [--rebuild | --no-rebuild]

Each flow is timed with its own default protocol (ONNX Runtime and llama.cpp rebuild every
artifact between rounds, ``paired-v2``; the others ``paired-v1``); ``--rebuild``/``--no-rebuild``
force one. With ``--merge`` a flow's results under the other protocol are kept beside the new ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.errors import AmoebaError  # noqa: E402
from profiler.device import profiles_root  # noqa: E402
from profiler.flows import flow_class, parse_flow_spec, split_flow_specs  # noqa: E402
from profiler.measure import MeasureConfig  # noqa: E402
from profiler.plan import measure_config_for  # noqa: E402

from benchmarks._profile_run import MODEL, profile_flow, run_isolated  # noqa: E402
FLOWS = "pytorch;llamacpp:quant=f16;llamacpp:quant=q4_0;onnxruntime"
TVM_TUNED = "tvm:trials=32"


def one_run(spec: str, depths: tuple[int, ...], widths: tuple[float, ...], threads: int, base: Path,
            mcfg: MeasureConfig) -> dict:
    """Profile one flow into a fresh root; its rows (ratio-derived and raw ms) and reference level."""
    run = profile_flow(spec, base, depths, widths, threads, mcfg, prefix="amoeba-repro-")
    level = run.level
    out = {
        "seconds": round(run.seconds, 1),
        "loadavg_before": run.loadavg_before,
        "loadavg_after": run.loadavg_after,
        **run.level_record(),
        "rows": {
            f"d{int(x.depth)}-w{float(x.width):.3f}": {
                "ms": round(float(x.ms), 4), "p50_ms": round(float(x.p50_ms), 4),
                "ratio": round(float(x.ratio), 5), "ratio_lo": round(float(x.ratio_lo), 5),
                "ratio_hi": round(float(x.ratio_hi), 5), "n": int(x.n), "util": round(float(x.util), 3),
            }
            for x in run.rows.itertuples()
        },
    }
    print(f"  {spec}: {run.written} rows in {run.seconds:.0f} s, reference {level.reference} level "
          f"{level.level_ms:.2f} ms (blocks p10-p90 {level.p10_ms:.2f}-{level.p90_ms:.2f}), "
          f"load {run.loadavg_after}", flush=True)
    return out


def _share(runs: list[dict], field: str) -> tuple[float, list[float]]:
    diffs: list[float] = []
    for a, b in itertools.combinations(runs, 2):
        for k in sorted(set(a["rows"]) & set(b["rows"])):
            diffs.append(abs(b["rows"][k][field] / a["rows"][k][field] - 1))
    return float((np.asarray(diffs) <= 0.05).mean()), diffs


def compare(spec: str, runs: list[dict]) -> dict:
    ratio_share, ratio_d = _share(runs, "ms")
    abs_share, abs_d = _share(runs, "p50_ms")
    only_share, _ = _share(runs, "ratio")
    overlap = []
    for a, b in itertools.combinations(runs, 2):
        for k in sorted(set(a["rows"]) & set(b["rows"])):
            x, y = a["rows"][k], b["rows"][k]
            overlap.append(x["ratio_lo"] <= y["ratio_hi"] and y["ratio_lo"] <= x["ratio_hi"])
    half = [(r["ratio_hi"] - r["ratio_lo"]) / (2 * r["ratio"]) for run in runs for r in run["rows"].values()]
    return {
        "flow": spec,
        "status": "measured",
        "rows": len(runs[0]["rows"]),
        "pairs": len(ratio_d),
        "within_5pct_ratio": round(ratio_share, 3),
        "within_5pct_abs": round(abs_share, 3),
        "within_5pct_ratio_only": round(only_share, 3),
        "median_abs_change_ratio": round(float(np.median(ratio_d)), 4),
        "max_abs_change_ratio": round(float(np.max(ratio_d)), 4),
        "median_abs_change_abs": round(float(np.median(abs_d)), 4),
        "max_abs_change_abs": round(float(np.max(abs_d)), 4),
        "ratio_intervals_overlap": round(float(np.mean(overlap)), 3),
        "ratio_interval_half_width_median": round(float(np.median(half)), 4),
        "level_change": [round(b["level_ms"] / a["level_ms"] - 1, 4) for a, b in itertools.combinations(runs, 2)],
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flows", default=FLOWS, help="';'-separated flow[:key=value,...]")
    ap.add_argument("--tvm-tuned", action="store_true", help=f"also {TVM_TUNED} (tunes first: minutes per width)")
    ap.add_argument("--depths", default="6,12,18,24,30")
    ap.add_argument("--widths", default="1,0.875,0.75,0.625")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--gap", type=float, default=0.0, help="seconds to wait between runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", type=Path, default=None, help="where cpu-host/device.yaml (and TVM tuning) live")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reproducibility.json")
    ap.add_argument("--merge", action="store_true", help="keep the results of flows not run now from --out")
    ap.add_argument("--rebuild", action=argparse.BooleanOptionalAction, default=None,
                    help="rebuild every artifact between rounds (protocol paired-v2) or not (paired-v1); "
                         "default: each flow's own (Flow.rebuild_between_rounds)")
    args = ap.parse_args()
    if args.runs < 2:
        raise SystemExit("error: --runs must be >= 2")
    base = profiles_root(args.root)
    flows = args.flows + (f";{TVM_TUNED}" if args.tvm_tuned else "")
    specs, results = [], []
    for spec in split_flow_specs(flows):
        try:
            flow_class(parse_flow_spec(spec)[0]).check_available()
            specs.append(spec)
        except AmoebaError as e:
            print(f"{spec}: not installed ({e})")
            results.append({"flow": spec, "status": f"not installed: {e}"})
    depths = tuple(int(d) for d in args.depths.split(","))
    widths = tuple(float(w) for w in args.widths.split(","))
    mcfg = MeasureConfig(rebuild=args.rebuild)
    t0 = time.perf_counter()

    def protocol(spec: str) -> str:  # the flow's own when --rebuild/--no-rebuild is not given
        return measure_config_for(parse_flow_spec(spec)[0], mcfg).protocol

    skipped = results

    def write(done: list[dict], complete: bool) -> None:
        out = {"model": MODEL, "phase": "decode", "prompt_len": 128, "threads": args.threads,
               "depths": list(depths), "widths": list(widths), "runs": args.runs, "gap_s": args.gap,
               "protocol": "per flow, in each result (paired-v2: rebuilt between rounds)", "complete": complete,
               "measure": {"rounds": mcfg.rounds, "min_repeats": mcfg.min_repeats, "max_repeats": mcfg.max_repeats,
                           "min_seconds": mcfg.min_seconds, "max_seconds": mcfg.max_seconds, "rel_ci": mcfg.rel_ci},
               "tvm_tuned": args.tvm_tuned, "seconds": round(time.perf_counter() - t0, 1),
               "results": done + skipped}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))

    done: list[dict] = []
    if args.merge and args.out.is_file():  # keep the other flows' results of an earlier invocation
        done = [r for r in json.loads(args.out.read_text())["results"]
                if r["flow"] not in specs + [x["flow"] for x in skipped]
                or r.get("protocol", "paired-v1") != protocol(r["flow"])]  # a flow's result under the other protocol stays
    for spec in specs:  # a flow's runs one after the other (--gap apart), its result written at once
        runs = []
        try:
            for i in range(args.runs):
                if i and args.gap:
                    time.sleep(args.gap)
                print(f"{spec}: run {i + 1}/{args.runs}", flush=True)
                runs.append(run_isolated(one_run, spec, depths, widths, args.threads, base, mcfg))
            done.append({**compare(spec, runs), "protocol": protocol(spec)})
        except RuntimeError as e:
            print(f"{spec}: failed: {e}", flush=True)
            done.append({"flow": spec, "status": f"failed on this host: {e}"})
        write(done, False)
    write(done, True)
    print(f"\n{'flow':22} {'protocol':9} {'rows':>4} {'ratio ±5%':>9} {'abs ±5%':>8} {'ratio-only':>10} {'level Δ':>8} "
          f"{'drift/run (p90-p10)/level':>26}")
    for r in done + skipped:
        if r["status"] != "measured":
            print(f"{r['flow']:22} {r['status']}")
            continue
        drift = ", ".join(f"{100 * x['level_drift']:.1f}%" for x in r["runs"])
        print(f"{r['flow']:22} {r.get('protocol', 'paired-v1'):9} {r['rows']:4d} {100 * r['within_5pct_ratio']:8.0f}% {100 * r['within_5pct_abs']:7.0f}% "
              f"{100 * r['within_5pct_ratio_only']:9.0f}% {100 * r['level_change'][0]:+7.1f}% {drift:>26}")
    print(f"-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")

if __name__ == "__main__":
    main()
