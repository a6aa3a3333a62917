"""Figure 1 of the AmoebaLLM paper, for the devices and flows profiled here.

Left: latency vs depth at full width; right: latency vs width at full depth; one line per
device/flow/variant. Measured (or per-layer composed) points are solid, predictor points
dash-dotted, roofline-only devices (spec sheets: a5000, orin-nx-16gb) dashed and labelled
"roofline". Every table under the profiles root for ``--model`` on cpu-host is drawn, so flows
added later appear without changes here.

fig1.json also holds, over the measured shape grid: the Spearman rank correlation of shape
latencies between every pair of lines, and each line's latency-optimal shape for three
budgets (50%, 70%, 85% of that line's full-model latency). Without accuracy at hand, the
optimal shape is the one with the most parameters whose latency fits the budget (ties: the
faster) — a proxy the search package refines with measured accuracy. Differing choices across
lines are the paper's point: the fastest shape depends on the device and flow.

Before drawing, the script profiles every flow of ``--flows`` that is installed here (others
are listed as skipped with their install hint): PyTorch on the whole grid, the other flows on
the sparse plan (shallowest, middle and deepest depth x every width; the predictor fills the
rest and those points are drawn dash-dotted). Rows already in a table are reused, so a second
run only draws. From a clean checkout on this 2-core host the first run takes about half an
hour, most of it ONNX exports and TVM's MetaSchedule tuning (once per width, cached under
device_profiles/cpu-host/tvm_tuning/).

    python benchmarks/fig1.py [--model smollm2-135m] [--phase decode] [--flows "pytorch;tvm:trials=32"]
    python benchmarks/fig1.py --quick       # a small measured grid in a temporary root (PyTorch only)
    python benchmarks/fig1.py --no-measure  # draw the tables as they are
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.errors import AmoebaError  # noqa: E402
from amoeba_core.shape import ModelGeometry  # noqa: E402
from profiler.device import list_devices, load_device, profiles_root, spec_only_root  # noqa: E402
from profiler.flows import flow_class, parse_flow_spec, split_flow_specs  # noqa: E402
from profiler.lookup import LatencyModel, list_tables  # noqa: E402
from profiler.measure import QUICK, MeasureConfig  # noqa: E402
from profiler.plan import make_plan, run_profile  # noqa: E402

BUDGETS = (0.5, 0.7, 0.85)
# flow[:key=value,...]: every CPU flow, with llama.cpp in f16 and two quantised types, TVM tuned
FLOWS = ("pytorch", "onnxruntime", "llamacpp:quant=f16", "llamacpp:quant=q8_0", "llamacpp:quant=q4_0",
         "tvm:trials=32")


def profile_flows(specs: list[str], model: str, phase: str, prompt_len: int, threads: int, quick: bool,
                  root: Path) -> None:
    """Profile each installed flow of ``specs`` (PyTorch on the whole grid, the others sparse)."""
    geometry = ModelGeometry.resolve(model)
    n = geometry.n_layers
    depths = (n // 5, n // 2, n) if quick else tuple(sorted({max(1, n * k // 5) for k in range(1, 6)}))
    widths = (1.0, 0.75) if quick else (1.0, 0.875, 0.75, 0.625)
    per_layer = geometry.n_params() > 2e9
    for spec in specs:
        name, opts = parse_flow_spec(spec)
        try:
            flow_class(name).check_available()
        except AmoebaError as e:
            print(f"{spec}: skipped ({e})")
            continue
        plan = make_plan(
            "cpu-host",
            name,
            model,
            depths,
            widths,
            (phase,),
            prompt_len,
            "float32",
            threads,
            sparse=name != "pytorch" and not per_layer,
            per_layer=per_layer,
            measure_cfg=QUICK if quick else MeasureConfig(),
            options=opts,
        )
        r = run_profile(plan, root)
        print(f"{spec}: {r.written} rows measured, {r.skipped} reused, {r.composed} composed ({r.seconds:.0f} s)")


def spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def collect(model: str, phase: str, prompt_len: int, root: Path) -> tuple[list[dict], list[tuple[int, float]]]:
    geometry = ModelGeometry.preset(model) if model in ModelGeometry.preset_names() else ModelGeometry.resolve(model)
    n = geometry.n_layers
    models: list[tuple[str, LatencyModel]] = []
    grid: set[tuple[int, float]] = set()
    for info in list_tables(root):
        if info.model != model or load_device(info.device, root).roofline_only:
            continue
        probe = LatencyModel.open(info.device, info.flow, model, phase, root=root)
        for variant in probe.table.variants:  # type: ignore[union-attr]
            try:
                m = LatencyModel.open(info.device, info.flow, model, phase, prompt_len, variant, root)
            except AmoebaError:
                continue
            models.append((f"{info.device} / {info.flow} [{variant}]", m))
            rows = m.table.rows(
                phase=phase,
                variant=variant,
                prompt_len=prompt_len,  # type: ignore[union-attr]
                source=("measured", "per-layer"),
            )
            grid |= {(int(d), round(float(w), 3)) for d, w in zip(rows.depth, rows.width)}
    for dev in list_devices(root):
        spec = load_device(dev, root)
        if spec.roofline_only:
            m = LatencyModel.open(dev, "tensorrt_llm", model, phase, prompt_len, "float16", root)
            models.append((f"{dev} roofline [fp16] (spec sheet, not measured)", m))
    if "cpu-host" in list_devices(root):
        m = (
            LatencyModel.open("cpu-host", "pytorch", model, phase, prompt_len, "float32", root)
            if any(i.device == "cpu-host" and i.flow == "pytorch" and i.model == model for i in list_tables(root))
            else None
        )
        if m is not None:
            models.append(("cpu-host roofline floor [fp32]", m))
    widths = sorted({w for _, w in grid} or {1.0, 0.875, 0.75, 0.625}, reverse=True)
    depths = sorted({d for d, _ in grid} or {n // 4, n // 2, 3 * n // 4, n})
    lines = []
    for label, m in models:
        is_floor = "roofline" in label
        kind = "roofline" if is_floor else "flow"

        def point(d: int, w: float, m: LatencyModel = m, is_floor: bool = is_floor) -> dict | None:
            if is_floor:
                ms = m.roofline_ms(d, w)
                return None if ms is None else {"depth": d, "width": w, "ms": round(ms, 4), "source": "roofline"}
            try:
                e = m.estimate(d, w)
            except AmoebaError:
                return None
            return {"depth": d, "width": w, "ms": round(e.ms, 4), "source": e.source}

        vs_depth = [p for d in sorted(set(depths) | {n}) if (p := point(d, 1.0))]
        vs_width = [p for w in widths if (p := point(n, w))]
        on_grid = [p for d, w in sorted(grid) if (p := point(d, w))]
        lines.append(
            {
                "label": label,
                "device": m.device.name,
                "flow": m.flow,
                "variant": m.variant,
                "kind": kind,
                "roofline_only_device": m.device.roofline_only,
                "vs_depth": vs_depth,
                "vs_width": vs_width,
                "grid": on_grid,
                "params": {f"d{d}-w{w:.3f}": geometry.scaled_dims(d, w).n_params() for d, w in grid},
            }
        )
    return lines, sorted(grid)


def analyse(lines: list[dict], geometry: ModelGeometry) -> dict:
    usable = [ln for ln in lines if ln["grid"]]
    pairs = []
    for a, b in itertools.combinations(usable, 2):
        ka = {(p["depth"], p["width"]): p["ms"] for p in a["grid"]}
        kb = {(p["depth"], p["width"]): p["ms"] for p in b["grid"]}
        keys = sorted(set(ka) & set(kb))
        if len(keys) >= 3:
            pairs.append(
                {
                    "a": a["label"],
                    "b": b["label"],
                    "n_shapes": len(keys),
                    "spearman": round(spearman([ka[k] for k in keys], [kb[k] for k in keys]), 3),
                }
            )
    optimal = {}
    for ln in usable:
        pts = ln["grid"]
        full = max(pts, key=lambda p: (p["depth"], p["width"]))["ms"]
        choices = []
        for frac in BUDGETS:
            budget = frac * full
            fits = [p for p in pts if p["ms"] <= budget]
            if not fits:
                choices.append({"budget_fraction": frac, "budget_ms": round(budget, 3), "shape": None})
                continue
            best = max(fits, key=lambda p: (geometry.scaled_dims(p["depth"], p["width"]).n_params(), -p["ms"]))
            choices.append(
                {
                    "budget_fraction": frac,
                    "budget_ms": round(budget, 3),
                    "shape": f"d{best['depth']}-w{best['width']:.3f}",
                    "ms": best["ms"],
                    "source": best["source"],
                }
            )
        optimal[ln["label"]] = choices
    differ = (
        {str(f): len({c[i]["shape"] for c in optimal.values()}) > 1 for i, f in enumerate(BUDGETS)} if optimal else {}
    )
    return {"spearman": pairs, "optimal_shape": optimal, "optimal_differs_across_lines": differ}


def draw(lines: list[dict], model: str, phase: str, prompt_len: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, ln in enumerate(lines):
        color = f"C{i % 10}"
        style = "--" if ln["kind"] == "roofline" else "-"
        for ax, key, x in ((ax1, "vs_depth", "depth"), (ax2, "vs_width", "width")):
            pts = ln[key]
            if not pts:
                continue
            if ln["kind"] == "roofline":
                ax.plot([p[x] for p in pts], [p["ms"] for p in pts], style, color=color, label=ln["label"])
                continue
            real = [p for p in pts if p["source"] in ("measured", "per-layer")]
            ax.plot([p[x] for p in pts], [p["ms"] for p in pts], "-.", color=color, alpha=0.5)
            ax.plot([p[x] for p in real], [p["ms"] for p in real], "o-", color=color, label=ln["label"])
    ax1.set_xlabel("depth (layers) at width 1.0")
    ax2.set_xlabel("width ratio at full depth")
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        ax.set_ylabel(f"{phase} latency (ms), prompt {prompt_len}")
        ax.grid(True, which="both", alpha=0.3)
    ax2.invert_xaxis()
    ax1.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{model}: {phase} latency vs depth and width (solid: measured or per-layer composed; dash-dot: predicted; "
        f"dashed: roofline floor, not measured)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--phase", default="decode", choices=("prefill", "decode"))
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-measure", action="store_true", help="draw existing tables only")
    ap.add_argument("--flows", default=None,
                    help="flows to profile before drawing, ';'-separated flow[:key=value,...] "
                         f"(default: {';'.join(FLOWS)}; --quick: pytorch)")
    ap.add_argument("--png", type=Path, default=REPO / "benchmarks" / "results" / "fig1.png")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fig1.json")
    args = ap.parse_args()
    root = spec_only_root(args.root, "amoeba-fig1-") if args.quick else profiles_root(args.root)
    geometry = ModelGeometry.resolve(args.model)
    if not args.no_measure:
        specs = ["pytorch"] if args.quick and args.flows is None else split_flow_specs(args.flows or ";".join(FLOWS))
        profile_flows(specs, args.model, args.phase, args.prompt_len, args.threads, args.quick, root)
    lines, grid = collect(args.model, args.phase, args.prompt_len, root)
    stats = analyse(lines, geometry)
    draw(lines, args.model, args.phase, args.prompt_len, args.png)
    for ln in lines:
        print(f"{ln['label']}: full model {ln['vs_depth'][-1]['ms'] if ln['vs_depth'] else float('nan'):.3f} ms")
    print("\nSpearman rank correlation of shape latencies:")
    for p in stats["spearman"]:
        print(f"  {p['spearman']:+.3f}  {p['a']}  vs  {p['b']}  ({p['n_shapes']} shapes)")
    print("\nlatency-optimal shape (most parameters within budget = fraction of the line's full-model latency):")
    for label, ch in stats["optimal_shape"].items():
        print(f"  {label}: " + ", ".join(f"{c['budget_fraction']:.0%} -> {c['shape']}" for c in ch))
    print(f"differs across lines: {stats['optimal_differs_across_lines']}")
    out = {
        "quick": args.quick,
        "root": str(root),
        "model": args.model,
        "phase": args.phase,
        "prompt_len": args.prompt_len,
        "grid": [f"d{d}-w{w:.3f}" for d, w in grid],
        "lines": lines,
        **stats,
        "png": os.path.relpath(args.png, REPO),  # no absolute path of this machine
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n-> {args.png}\n-> {args.out}")


if __name__ == "__main__":
    main()
