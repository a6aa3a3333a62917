"""Few-shot latency tables: how well does a line transferred from K measurements match its full profile?

Lines: every flow/variant installed here (PyTorch float32 and bfloat16, llama.cpp f16/q8_0/q4_0, ONNX
Runtime float32) at 1 and 2 threads on cpu-host, each profiled on the demo grid (depths 6/12/18/24/30 x
widths 1/0.875/0.75/0.625, decode, prompt 128, smollm2-135m; rows already present are reused) by its
own `amoeba profile` process, so a runtime that crashes loses only its lines (reported in the JSON).
Then, leaving one line out at a time, the line is transferred (:mod:`profiler.transfer`) from all
the others with K = 1, 3, 5 of its own measurements, at the shapes the model chooses, and scored on
its *other* shapes (the transferred ones only: the K measured shapes are not counted). Beside it:

* ``roofline1``: the roofline of each shape (cpu-host spec, the line's weight type) scaled by one
  measurement (the same shape K = 1 chooses);
* ``sparse``: the predictor of :mod:`profiler.predict` fitted on the sparse plan's depths x all
  widths of the line (its measurement count is reported), scored on the grid's other shapes;
* ``cross_config_k3``: K = 3 again, with every thread count of the held-out line's flow/variant
  left out too (a flow or quantisation never profiled before on this device).

Scores per held-out line: share of scored shapes within ±10% and ±5% of the measurement, Spearman
correlation over them, and (transfer) the share inside the 90% interval. Medians over lines have a
bootstrap interval over lines. The measured matrix is saved in the JSON, so ``--analyse-only``
re-scores it without timing anything.

    python benchmarks/few_shot.py                 # profile what is missing, then score (CPU-heavy)
    python benchmarks/few_shot.py --analyse-only  # re-score the matrix in the result file
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.shape import ModelGeometry  # noqa: E402
from amoeba_core.stats import median_ci  # noqa: E402
from profiler.device import load_device, profiles_root  # noqa: E402
from profiler.predict import LatencyPredictor, sparse_depths  # noqa: E402
from profiler.roofline import dtype_bytes, peak_dtype_for, roofline  # noqa: E402
from profiler.transfer import Line, LineKey, TransferModel, calibrate_z, common_shapes, load_lines  # noqa: E402

MODEL = "smollm2-135m"
DEPTHS = (6, 12, 18, 24, 30)
WIDTHS = (1.0, 0.875, 0.75, 0.625)
PHASE, PROMPT = "decode", 128
# flow[:key=value,...][@dtype]; the ones most likely to run first (a crashing runtime is reported, not fatal)
CONFIGS = ("pytorch", "pytorch@bfloat16", "llamacpp:quant=f16", "onnxruntime", "llamacpp:quant=q8_0",
           "llamacpp:quant=q4_0")
THREADS = (1, 2)
KS = (1, 3, 5)
REFERENCE = (max(DEPTHS), 1.0)  # the paired protocol's reference: the full-size model
OUT = REPO / "benchmarks" / "results" / "few_shot.json"


def profile_lines(root: Path, configs: list[str]) -> list[dict]:
    """Profile every (config, threads) line of the demo grid, each in its own `amoeba profile` process:
    a runtime that crashes (llama.cpp's quantised kernels die of SIGILL on some VMs) loses its line only."""
    import subprocess

    from profiler.flows import parse_flow_spec

    log = []
    for t in THREADS:
        for spec in configs:
            flow_spec, _, dtype = spec.partition("@")
            flow, opts = parse_flow_spec(flow_spec)
            cmd = [sys.executable, "-m", "amoeba", "profile", "--device", "cpu-host", "--flow", flow, "--model", MODEL,
                   "--depths", ",".join(map(str, DEPTHS)), "--widths", ",".join(f"{w:g}" for w in WIDTHS),
                   "--phases", PHASE, "--prompt-len", str(PROMPT), "--dtype", dtype or "float32", "--threads", str(t),
                   "--root", str(root.resolve())]
            for k, v in opts.items():
                cmd += ["--option", f"{k}={v}"]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            dt = round(time.perf_counter() - t0, 1)
            if r.returncode != 0:
                why = (r.stderr.strip().splitlines() or [""])[-1][:200]
                if r.returncode < 0:
                    why = f"crashed with signal {-r.returncode} ({why})" if why else f"crashed with signal {-r.returncode}"
                print(f"{spec} t{t}: not profiled: {why} ({dt:.0f} s)", flush=True)
                log.append({"config": spec, "threads": t, "error": why, "seconds": dt})
                continue
            done = next((ln for ln in r.stdout.splitlines() if "rows measured" in ln), "").strip()
            print(f"{spec} t{t}: {done} ({dt:.0f} s)", flush=True)
            log.append({"config": spec, "threads": t, "result": done.split(" -> ")[0], "seconds": dt})
    return log


def collect(root: Path) -> tuple[list[Line], dict[str, dict]]:
    """The complete demo-grid lines of cpu-host, and each line's noise: median row spread (p90/p10 of
    its samples), median half-width of its rows' 90% intervals (the paired ratio's, in ms) and the
    median CPU use per thread (contention: 1 = the runtime's threads had their cores)."""
    from profiler.table import LatencyTable
    from profiler.transfer import line_rows

    lines: list[Line] = []
    spread: dict[str, float] = {}
    grid = {(d, round(w, 3)) for d in DEPTHS for w in WIDTHS}
    for ln in load_lines(root, MODEL, PHASE, PROMPT):
        if ln.key.device != "cpu-host" or ln.key.threads not in THREADS or not grid <= set(ln.ms):
            continue
        lines.append(Line(ln.key, {s: v for s, v in ln.ms.items() if s in grid}))
        rows = line_rows(LatencyTable("cpu-host", ln.key.flow, MODEL, root), ln.key)
        rows = rows[[(int(d), round(float(w), 3)) in grid for d, w in zip(rows["depth"], rows["width"])]]
        spread[ln.key.label] = {
            "row_p90_over_p10_median": round(float((rows["p90_ms"] / rows["p10_ms"]).median()), 3),
            "row_ci90_halfwidth_median": round(float(((rows["ms_hi"] - rows["ms_lo"]) / (2 * rows["ms"])).median()), 4),
            "util_median": round(float(rows["util"].median()), 3) if "util" in rows else None,
        }
    return lines, spread


# -- scoring ----------------------------------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def score(pred: dict, truth: dict, interval: dict | None = None) -> dict:
    shapes = sorted(pred)
    p = np.array([pred[s] for s in shapes])
    y = np.array([truth[s] for s in shapes])
    err = np.abs(p / y - 1)
    out = {
        "n_scored": len(shapes),
        "within_10pct": round(float((err <= 0.10).mean()), 3),
        "within_5pct": round(float((err <= 0.05).mean()), 3),
        "median_abs_error": round(float(np.median(err)), 4),
        "max_abs_error": round(float(err.max()), 4),
        "spearman": round(_spearman(p, y), 4),
    }
    if interval is not None:
        inside = [interval[s][0] <= truth[s] <= interval[s][1] for s in shapes]
        out["interval90_coverage"] = round(float(np.mean(inside)), 3)
        out["interval90_median_halfwidth"] = round(
            float(np.median([(interval[s][1] - interval[s][0]) / (2 * pred[s]) for s in shapes])), 4)
    return out


def transfer_score(line: Line, others: list[Line], k: int) -> dict:
    shapes = common_shapes([line, *others])
    model = TransferModel.fit(others, shapes)
    z, _ = calibrate_z(others, k, shapes, [REFERENCE])
    chosen = model.choose(k, [REFERENCE])  # as `amoeba profile --few-shot`: the paired reference first
    obs = {s: line.ms[s] for s in chosen}
    rows = model.transfer(obs, z)
    pred = {(t.depth, t.width): t.ms for t in rows}
    iv = {(t.depth, t.width): (t.lo_ms, t.hi_ms) for t in rows}
    return {"measured_shapes": [f"d{d}-w{w:.3f}" for d, w in chosen], "n_measured": len(chosen),
            "rank": model.rank, "noise_sd_log": round(math.sqrt(model.noise_var), 4), "z": round(z, 3),
            **score(pred, line.ms, iv)}


def roofline_score(line: Line, shape: tuple[int, float], spec, geometry: ModelGeometry) -> dict:
    wb, peak = dtype_bytes(line.key.variant), peak_dtype_for(line.key.variant)

    def rf(s: tuple[int, float]) -> float:
        return roofline(geometry.scaled_dims(*s), spec, PHASE, PROMPT, wb, peak).floor_ms

    scale = line.ms[shape] / rf(shape)
    pred = {s: scale * rf(s) for s in line.ms if s != shape}
    return {"measured_shapes": [f"d{shape[0]}-w{shape[1]:.3f}"], "n_measured": 1, **score(pred, line.ms)}


def sparse_score(line: Line, geometry: ModelGeometry) -> dict:
    fit_d = sparse_depths(DEPTHS)
    fit = pd.DataFrame([{"depth": d, "width": w, "p50_ms": v} for (d, w), v in line.ms.items() if d in fit_d])
    pred_model = LatencyPredictor.fit(fit, geometry)
    pred = {s: pred_model.predict(*s) for s in line.ms if s[0] not in fit_d}
    return {"fit_depths": list(fit_d), "n_measured": len(fit), **score(pred, line.ms)}


def analyse(lines: list[Line], spec, geometry: ModelGeometry) -> dict:
    per_line = []
    for line in lines:
        others = [x for x in lines if x.key != line.key]
        rec: dict = {"line": line.key.label, "flow": line.key.flow, "variant": line.key.variant,
                     "threads": line.key.threads}
        for k in KS:
            rec[f"k{k}"] = transfer_score(line, others, k)
        rec["k3_within_10pct"] = rec["k3"]["within_10pct"]
        rec["roofline1"] = roofline_score(line, _parse(rec["k1"]["measured_shapes"][0]), spec, geometry)
        rec["sparse"] = sparse_score(line, geometry)
        strangers = [x for x in others if x.key.config != line.key.config]
        rec["cross_config_k3"] = transfer_score(line, strangers, 3)
        per_line.append(rec)

    def med(path: tuple[str, ...]) -> dict:
        vals = []
        for r in per_line:
            v = r
            for p in path:
                v = v[p]
            vals.append(float(v))
        vals = [v for v in vals if not math.isnan(v)]
        ci = median_ci(vals)
        return {"median": round(ci.value, 3), "lo": round(ci.lo, 3), "hi": round(ci.hi, 3), "n_lines": ci.n}

    summary: dict = {}
    for name in [f"k{k}" for k in KS] + ["roofline1", "sparse", "cross_config_k3"]:
        summary[name] = {m: med((name, m)) for m in ("within_10pct", "within_5pct", "spearman")}
        summary[name]["n_measured"] = per_line[0][name]["n_measured"]
        if "interval90_coverage" in per_line[0][name]:
            summary[name]["interval90_coverage"] = med((name, "interval90_coverage"))
    return {"per_line": per_line, "summary": summary,
            "k3_within_10pct_median": summary["k3"]["within_10pct"]["median"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=None, help="profiles root (default $AMOEBA_PROFILES or ./device_profiles)")
    ap.add_argument("--configs", default=";".join(CONFIGS), help="';'-separated flow specs to profile and score")
    ap.add_argument("--analyse-only", action="store_true", help="re-score the measured matrix saved in --out")
    ap.add_argument("--no-profile", action="store_true",
                    help="time nothing: score the complete lines already in the store")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t_start = time.perf_counter()
    root = profiles_root(args.root)
    geometry = ModelGeometry.resolve(MODEL)
    prof_log: list[dict] = []
    if args.analyse_only:
        saved = json.loads(args.out.read_text())
        lines = [Line(LineKey(**m["key"]), {_parse(s): v for s, v in m["ms"].items()}) for m in saved["matrix"]]
        spread = saved.get("line_noise", {})
        host = saved["host"]
        prof_log = saved.get("profiling", [])
    else:
        from profiler.device import ensure_device

        ensure_device("cpu-host", root)
        if not args.no_profile:
            prof_log = profile_lines(root, [c for c in args.configs.split(";") if c.strip()])
        lines, spread = collect(root)
        s = load_device("cpu-host", root)
        host = {"description": s.description, "memory_bandwidth_gbs": s.memory_bandwidth_gbs,
                "peak_flops": s.peak_flops}
    if len(lines) < 3:
        raise SystemExit(f"error: {len(lines)} complete lines of the demo grid; need at least 3")
    spec = load_device("cpu-host", root) if (root / "cpu-host" / "device.yaml").exists() else None
    if spec is None:
        from profiler.device import DeviceSpec

        spec = DeviceSpec("cpu-host", "cpu", host["memory_bandwidth_gbs"], host["peak_flops"])
    res = analyse(lines, spec, geometry)
    out = {
        "model": MODEL, "phase": PHASE, "prompt_len": PROMPT, "depths": list(DEPTHS), "widths": list(WIDTHS),
        "ks": list(KS), "lines": [ln.key.label for ln in lines], "n_lines": len(lines),
        "lines_wanted": [f"{c}/t{t}" for t in THREADS for c in args.configs.split(";") if c.strip()],
        "goal": "median k3_within_10pct >= 0.90 and Spearman >= 0.95",
        "scored_on": "the shapes of each held-out line that were not measured for it (transferred/predicted only)",
        "host": host,
        "noise": "per line: median over its rows of the samples' p90/p10, of the half-width of the row's 90% "
                 "interval (paired ratio x reference level) and of the CPU use per thread; a transferred value "
                 "cannot be scored more precisely than the measurement it is compared with",
        "line_noise": spread,
        "k3_within_10pct_median": res["k3_within_10pct_median"],
        "summary": res["summary"],
        "per_line": res["per_line"],
        "profiling": prof_log,
        "matrix": [{"key": ln.key.__dict__, "ms": {f"d{d}-w{w:.3f}": v for (d, w), v in sorted(ln.ms.items())}}
                   for ln in lines],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{'line':34} {'k1 ±10%':>8} {'k3 ±10%':>8} {'k3 ±5%':>7} {'k3 rho':>7} {'k5 ±10%':>8} "
          f"{'roof1':>6} {'sparse':>7} {'xcfg3':>6}")
    for r in res["per_line"]:
        print(f"{r['line']:34} {r['k1']['within_10pct']:8.2f} {r['k3']['within_10pct']:8.2f} "
              f"{r['k3']['within_5pct']:7.2f} {r['k3']['spearman']:7.3f} {r['k5']['within_10pct']:8.2f} "
              f"{r['roofline1']['within_10pct']:6.2f} {r['sparse']['within_10pct']:7.2f} "
              f"{r['cross_config_k3']['within_10pct']:6.2f}")
    for name, s in res["summary"].items():
        print(f"{name:16} n_measured={s['n_measured']:2d}  ±10%: {s['within_10pct']['median']:.2f} "
              f"[{s['within_10pct']['lo']:.2f}, {s['within_10pct']['hi']:.2f}]  ±5%: {s['within_5pct']['median']:.2f}  "
              f"Spearman: {s['spearman']['median']:.3f}"
              + (f"  90% interval coverage: {s['interval90_coverage']['median']:.2f}"
                 if "interval90_coverage" in s else ""))
    print(f"\n-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


def _parse(text: str) -> tuple[int, float]:
    d, w = text[1:].split("-w")
    return int(d), round(float(w), 3)


if __name__ == "__main__":
    main()
