"""How many accuracy evaluations each search method needs to reach 99% of the exhaustive front.

On a strategy's space (depths x a fine width axis) with one device/flow latency table:

1. evaluate every shape's accuracy once (cached in ``<run>/accuracy.parquet``; a re-run is free)
   and compute the exhaustive front's hypervolume (reference: 1.01 x the slowest latency and the
   lowest accuracy of the space);
2. run hierarchical search, NSGA-II, TPE and random search (several seeds; the cached scores
   make every run cheap, but each method only *counts* the distinct shapes it asked for) and
   record after how many evaluations the found front first reaches 99% of that hypervolume.

    python benchmarks/search_efficiency.py --strategy benchmarks/results/smollm2_strategy.yaml \
        --device cpu-host --flow pytorch
    python benchmarks/search_efficiency.py --quick    # tiny random model, a fresh tiny table

Writes benchmarks/results/search_efficiency.json (search_efficiency_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.shape import parse_ints  # noqa: E402

METHODS = ("hierarchical", "nsga2", "tpe", "random")


def quick_setup(work: Path) -> tuple[Path, Path]:
    """A real tiny strategy and a real cpu-host PyTorch decode table of `tiny` (seconds)."""
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy
    from profiler.device import detect_host, save_device
    from profiler.measure import MeasureConfig
    from profiler.plan import make_plan, run_profile

    root = work / "profiles"
    strategy = work / "strategy.yaml"
    if not (root / "cpu-host" / "pytorch-tiny.parquet").exists():
        save_device(detect_host(threads=1), root)
        fast = MeasureConfig(warmup=1, min_repeats=3, max_repeats=5, max_seconds=0.2, rel_ci=0.1, rounds=1,
                             min_seconds=0)
        plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode", "prefill"), 16,
                         "float32", 1, measure_cfg=fast)
        run_profile(plan, root)
    if not strategy.exists():
        m = load_model("tiny")
        Strategy.trivial(m.geometry, m.fingerprint, "tiny", widths=(1.0, 0.75, 0.5)).save(strategy)
    return strategy, root


def first_reach(history: list, ref: tuple[float, float], target: float) -> int | None:
    from search.pareto import hypervolume

    lat: list[float] = []
    acc: list[float] = []
    for k, e in enumerate(history, 1):
        lat.append(e.latency_ms)
        acc.append(e.accuracy)
        if hypervolume(lat, acc, *ref) >= target:
            return k
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", type=Path, default=REPO / "benchmarks/results/smollm2_strategy.yaml")
    ap.add_argument("--device", default="cpu-host")
    ap.add_argument("--flow", default="pytorch")
    ap.add_argument("--model", default=None, help="latency-table model name (default: the strategy's)")
    ap.add_argument("--root", type=Path, default=None, help="profiles folder")
    ap.add_argument("--phase", default="decode")
    ap.add_argument("--widths", default="0.5:1:1/32", help="width axis, LO:HI:STEP or a list")
    ap.add_argument("--depths", default=None, help="depths to use (default: the strategy's, largest 16)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--run", type=Path, default=REPO / "runs/bench-search")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny random model, fresh tiny table, 2 seeds")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=os.environ.get("AMOEBA_LOG", "WARNING"))
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(int(os.environ.get("AMOEBA_THREADS", "2")))
    from search.cli import _widths
    from search.evolutionary import run_optuna
    from search.hierarchical import run_hierarchical
    from search.objectives import AccuracyObjective, AccuracyTable, LatencyObjective
    from search.pareto import hypervolume, pareto_indices
    from search.problem import SearchProblem
    from search.space import SearchSpace

    if args.quick:
        work = Path(tempfile.gettempdir()) / "amoeba-bench-quick2"
        args.strategy, args.root = quick_setup(work)
        args.run, args.seeds, args.seq_len, args.max_windows = work / "run", min(args.seeds, 2), 32, 2
        args.widths = args.widths if args.widths != "0.5:1:1/32" else "0.5:1:1/16"
    if not args.strategy.is_file():
        sys.exit(f"error: strategy {args.strategy} not found (make one with `amoeba select`, or use --quick)")
    from amoeba_core.strategy import Strategy

    strat = Strategy.load(args.strategy)
    depths = parse_ints(args.depths) if args.depths else tuple(sorted(strat.depths)[-16:])
    space = SearchSpace.from_strategy(args.strategy, model=args.model, widths=_widths(args.widths), depths=depths)
    latency = LatencyObjective(args.device, args.flow, space.model, args.phase, root=args.root)
    table = AccuracyTable(args.run / "accuracy.parquet")
    accuracy = AccuracyObjective.from_stage1(args.strategy, table, split="val", seq_len=args.seq_len,
                                             max_windows=args.max_windows)
    shapes = space.shapes()
    print(f"space: {len(space.depths)} depths x {len(space.widths)} widths = {space.size} shapes "
          f"({space.model}, {args.device}/{args.flow} {args.phase})", flush=True)
    t0 = time.perf_counter()
    # Width by width, shallow to deep: the evaluator reuses the hidden states of a shared prefix.
    for k, s in enumerate(sorted(shapes, key=lambda s: (s.width, s.depth)), 1):
        accuracy(s)
        if k % 25 == 0:
            print(f"  exhaustive accuracy {k}/{space.size} ({time.perf_counter() - t0:.0f} s)", flush=True)
    exhaustive_s = time.perf_counter() - t0
    L = [latency(s).ms for s in shapes]
    A = [accuracy(s).top1_acc for s in shapes]
    ref = (max(L) * 1.01, min(A))
    full = hypervolume(L, A, *ref)
    front = pareto_indices(L, A)
    target = args.target * full
    print(f"exhaustive: {len(front)} front shapes, hypervolume {full:.6g}; "
          f"{accuracy.n_evaluated} new evaluations in {exhaustive_s:.0f} s", flush=True)

    results: dict[str, list[dict]] = {}
    for method in METHODS:
        seeds = [0] if method == "hierarchical" else list(range(args.seeds))
        for seed in seeds:
            p = SearchProblem(space, accuracy, latency)
            t1 = time.perf_counter()
            if method == "hierarchical":
                run_hierarchical(p, tol=0.0, max_evaluations=space.size)
            else:
                def reached(study: optuna.Study, _: object, p: SearchProblem = p) -> None:
                    hv = hypervolume([e.latency_ms for e in p.history], [e.accuracy for e in p.history], *ref)
                    if hv >= target:  # stop as soon as the target is reached: the count is all we need
                        study.stop()

                run_optuna(p, method, n_trials=8 * space.size, seed=seed, max_evaluations=space.size,
                           population_size=10, n_startup_trials=10, callbacks=[reached])
            need = first_reach(p.history, ref, target)
            results.setdefault(method, []).append({"seed": seed, "evaluations_to_target": need,
                                                   "evaluated": len(p.history),
                                                   "seconds": round(time.perf_counter() - t1, 3)})
        needs = [r["evaluations_to_target"] for r in results[method]]
        print(f"  {method:12s} evaluations to {args.target:.0%} HV: {needs}", flush=True)

    summary = {}
    for method, rs in results.items():
        needs = [r["evaluations_to_target"] if r["evaluations_to_target"] is not None else space.size for r in rs]
        summary[method] = {"median": statistics.median(needs), "mean": statistics.fmean(needs),
                           "max": max(needs), "fraction_of_space": statistics.median(needs) / space.size,
                           "reached_all": all(r["evaluations_to_target"] is not None for r in rs)}
    rnd = summary["random"]["median"]
    for m in summary:
        summary[m]["random_over_method"] = rnd / summary[m]["median"]
    print(f"\n{'method':12s} {'median':>7s} {'% space':>8s} {'random/x':>9s}")
    for m, s in summary.items():
        print(f"{m:12s} {s['median']:7.1f} {100 * s['fraction_of_space']:7.1f}% {s['random_over_method']:8.2f}x")
    out = args.out or REPO / "benchmarks/results" / ("search_efficiency_quick.json" if args.quick
                                                      else "search_efficiency.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "search_efficiency", "quick": args.quick, "strategy": str(args.strategy),
        "model": space.model, "device": args.device, "flow": args.flow, "phase": args.phase,
        "space": {"depths": list(space.depths), "widths": list(space.widths), "size": space.size},
        "accuracy": {"metric": "next-token top-1 (held-out val split)", "seq_len": args.seq_len,
                     "max_windows": args.max_windows, "exhaustive_seconds": round(exhaustive_s, 1),
                     "new_evaluations": accuracy.n_evaluated},
        "target_fraction": args.target, "reference_point": {"latency_ms": ref[0], "accuracy": ref[1]},
        "exhaustive": {"hypervolume": full, "front": [shapes[i].grid_key for i in front]},
        "settings": {"nsga2_population": 10, "tpe_startup_trials": 10, "seeds": args.seeds,
                     "hierarchical": "tol=0 (runs to exhaustion; the count is when 99% is first reached)"},
        "results": results, "summary": summary,
        "goals": {"fraction_of_space_max": 0.05, "random_over_method_min": 5.0},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "optuna": optuna.__version__, "host": platform.node()},
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
