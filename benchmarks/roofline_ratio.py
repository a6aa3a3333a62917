"""Measured decode latency as a multiple of the roofline floor, per width at full depth.

On cpu-host the floor uses the host's *measured* copy bandwidth and matmul peak
(device_profiles/cpu-host/device.yaml). smollm2-135m is timed as whole models at depth 30;
llama2-7b (too big to time whole on this 2-core host) in per-layer mode: whole models of
depth 1, 2 and 4, composed to depth 32. Every other table under the profiles root (other
flows) is reported the same way from its measured or per-layer rows, without timing.

    python benchmarks/roofline_ratio.py            # full (quiet machine)
    python benchmarks/roofline_ratio.py --quick    # width 1 only, few repeats, temporary root
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.errors import AmoebaError  # noqa: E402
from amoeba_core.shape import ModelGeometry  # noqa: E402
from profiler.device import profiles_root, spec_only_root  # noqa: E402
from profiler.lookup import LatencyModel, list_tables  # noqa: E402
from profiler.measure import QUICK, MeasureConfig  # noqa: E402
from profiler.plan import make_plan, run_profile  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--flows", default="pytorch", help="flows to time here (others: read from their tables)")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "roofline_ratio.json")
    args = ap.parse_args()
    root = spec_only_root(args.root, "amoeba-rr-") if args.quick else profiles_root(args.root)
    widths = (1.0,) if args.quick else (1.0, 0.875, 0.75, 0.625)
    mcfg = QUICK if args.quick else MeasureConfig()
    t0 = time.perf_counter()
    for flow in [f.strip() for f in args.flows.split(",") if f.strip()]:
        for model, per_layer in (("smollm2-135m", False), ("llama2-7b", True)):
            n = ModelGeometry.preset(model).n_layers
            plan = make_plan(
                "cpu-host",
                flow,
                model,
                (n,),
                widths,
                ("decode",),
                args.prompt_len,
                "float32",
                args.threads,
                per_layer=per_layer,
                measure_cfg=mcfg,
            )
            r = run_profile(plan, root)
            print(
                f"{flow}/{model}: {r.written} rows measured, {r.skipped} reused, {r.composed} composed "
                f"({r.seconds:.0f} s)"
            )

    results = []
    for info in list_tables(root):
        if info.device != "cpu-host":
            continue
        try:
            probe = LatencyModel.open(info.device, info.flow, info.model, "decode", root=root)
        except AmoebaError as e:
            print(f"skip {info.flow}/{info.model}: {e}")
            continue
        variants = probe.table.variants if probe.table is not None else [probe.variant]
        for variant in variants:
            try:
                m = LatencyModel.open(info.device, info.flow, info.model, "decode", args.prompt_len, variant, root)
            except AmoebaError:
                continue
            depth = m.geometry.n_layers
            for w in sorted(
                {round(float(x), 3) for x in m.table.rows(phase="decode", variant=variant)["width"]}, reverse=True
            ):
                est = m.estimate(depth, w)
                if est.source not in ("measured", "per-layer") or est.roofline_ms is None:
                    continue
                rl = m.roofline_at(depth, w)  # not None: est.roofline_ms is set
                assert rl is not None
                rows = m.table.rows(phase="decode", variant=variant, prompt_len=m.prompt_len, source="measured")
                rows = rows[rows["width"].round(3) == w]
                # legacy rows: every sample set aside by the old filter; paired rows: median util < 0.85
                contended = int(((rows["discarded"] >= rows["n"]) | (rows["util"] < 0.85)).sum())
                results.append(
                    {
                        "flow": info.flow,
                        "model": info.model,
                        "variant": variant,
                        "depth": depth,
                        "contended_input_rows": contended,
                        "width": w,
                        "source": est.source,
                        "measured_ms": round(est.ms, 3),
                        "roofline_ms": round(rl.floor_ms, 3),
                        "bound": rl.bound,
                        "ratio": round(est.ms / rl.floor_ms, 2),
                    }
                )
    dev = probe.device if results else None
    print(
        f"\ncpu-host floor: {dev.memory_bandwidth_gbs if dev else '?'} GB/s measured copy bandwidth, "
        f"prompt_len {args.prompt_len}, decode at full depth"
    )
    print(
        f"{'flow':12} {'model':13} {'variant':8} {'shape':11} {'source':9} {'measured':>9} {'floor':>8} "
        f"{'ratio':>6} bound   contended inputs"
    )
    for r in results:
        print(
            f"{r['flow']:12} {r['model']:13} {r['variant']:8} d{r['depth']}-w{r['width']:.3f} {r['source']:9} "
            f"{r['measured_ms']:8.2f}  {r['roofline_ms']:7.2f} {r['ratio']:5.2f}x {r['bound']:7} "
            f"{r['contended_input_rows']}"
        )
    out = {
        "quick": args.quick,
        "root": str(root),
        "prompt_len": args.prompt_len,
        "threads": args.threads,
        "device": dev.to_dict() if dev else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "goal": "best flow within 1.5x of the floor",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
