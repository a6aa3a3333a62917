"""Evaluated tokens each search method needs to reach 99% of the exhaustive front's hypervolume.

Ground truth: every shape of a strategy's space (depths x widths) scored at the *full* evaluation
budget (``--windows`` windows of ``--seq-len`` tokens spread over the held-out val split), latency
from one device/flow table; its Pareto front's hypervolume (reference: 1.01 x the slowest latency,
the lowest accuracy of the space) is the target's 100%.

1. One exhaustive pass runs real forward passes of every shape at every fidelity rung
   (``--rungs``, window counts; each rung's windows contain the previous rung's, so the pass runs
   each window once per shape) and caches every rung's score, with its 90% interval, in
   the run's store (``<run>/amoeba.db``). A re-run is free.
2. The methods are replayed against that cache, each charged the tokens it would have evaluated:
   multi-fidelity hierarchical search (screen at the cheapest rung, promote while the interval
   reaches the front; each ladder under search.hierarchical's promotion rule, the largest expected gain
   per token first, and under the earlier one, ``-interval``, kept in benchmarks/_interval_promotion.py),
   the same hierarchical scheme at the full
   budget only, and NSGA-II, TPE and
   random search at the full budget (5 seeds each; the hierarchical schemes are deterministic).
   A method's front is made of the shapes it scored at the full budget, valued at those scores.
3. ``cost_fraction`` = tokens until that front first reaches 99% of the exhaustive hypervolume /
   tokens of the exhaustive pass at the full budget (median over seeds).

    python benchmarks/search_efficiency.py            # SmolLM2 strategy, cpu-host pytorch decode
    python benchmarks/search_efficiency.py --quick    # tiny random model, a fresh tiny table
    python benchmarks/search_efficiency.py --attn-widths groups --out benchmarks/results/search_efficiency_axes.json
        # depth x attention width (1/0.667/0.333) x MLP width: 240 shapes
    python benchmarks/search_efficiency.py --windows 64 --run runs/bench-search-mf64 \
        --out benchmarks/results/search_efficiency_64w.json     # full budget 64 x 64 tokens per shape
    python benchmarks/search_efficiency.py ... --accuracy-only --shard 0/2 &    # the accuracy pass in two
    python benchmarks/search_efficiency.py ... --accuracy-only --shard 1/2      # processes (same other flags),
        # then the command once more without --accuracy-only/--shard: it finds every score cached
        # (torch threads per process: AMOEBA_THREADS, default 2; 1 each for two shards on 2 cores)

Without a cpu-host latency table for the model, a sparse one is profiled first
(``amoeba profile --sparse``: 3 depths x the widths, decode; the rest of the space is predicted).
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.shape import parse_ints  # noqa: E402
from benchmarks._profile_run import loadavg  # noqa: E402
from benchmarks._search_replay import ensure_table, first_reach, oracle_shapes, quick_setup, spending  # noqa: E402

METHODS = ("hierarchical-mf", "hierarchical", "nsga2", "tpe", "random")


def default_rungs(windows: int) -> str:
    """Ladders run when --rungs is not given (each must end at the full budget ``windows``)."""
    w = int(windows)
    if w <= 16:
        lads = [(2, 8, w), (2, 4, w), (2, w), (4, w)]
    else:
        lads = [(2, 8, w // 2, w), (2, 8, w), (4, 16, w), (4, w // 2, w)]
    out: list[str] = []
    for lad in lads:
        rungs = sorted({r for r in lad if 1 <= r <= w})
        text = ",".join(map(str, rungs))
        if len(rungs) > 1 and text not in out:
            out.append(text)
    return ";".join(out)


def shard(text: str, accuracy_only: bool) -> tuple[int, int]:
    """``I/N`` as (I, N), checked; only the accuracy pass can be split."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        sys.exit(f"error: --shard takes I/N (e.g. 0/2), got {text!r}")
    if not 0 <= part < parts:
        sys.exit(f"error: --shard {text}: need 0 <= I < N")
    if not accuracy_only:
        sys.exit("error: --shard splits the accuracy pass only; add --accuracy-only, then run once without it")
    return part, parts


def rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return Path(path).name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", type=Path, default=REPO / "benchmarks/results/smollm2_strategy.yaml")
    ap.add_argument("--device", default="cpu-host")
    ap.add_argument("--flow", default="pytorch")
    ap.add_argument("--model", default=None, help="latency-table model name (default: the strategy's)")
    ap.add_argument("--root", type=Path, default=None, help="profiles folder")
    ap.add_argument("--phase", default="decode")
    ap.add_argument("--widths", default="0.5:1:1/8", help="width axis, LO:HI:STEP or a list")
    ap.add_argument("--attn-widths", default="",
                    help="attention widths as an axis of their own ('groups': every width that keeps all KV groups, "
                         "1/0.667/0.333 for SmolLM2; or a list); --widths are then MLP widths. "
                         "Default: one width ratio")
    ap.add_argument("--depths", default=None, help="depths to use (default: the strategy's, largest 16)")
    ap.add_argument("--seq-len", type=int, default=64, help="evaluation window (tokens)")
    ap.add_argument("--windows", type=int, default=16, help="full evaluation budget (windows per shape)")
    ap.add_argument("--rungs", default=None, help="fidelity rungs of the multi-fidelity search (window counts, "
                    "the last = --windows); several ladders separated by ';' are each run and reported. Default: "
                    "2,8,16;2,4,16;2,16;4,16 for 16 windows, else 2,8,W/2,W;2,8,W;4,16,W;4,W/2,W (W = --windows)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--run", type=Path, default=REPO / "runs/bench-search-mf")
    ap.add_argument("--quick", action="store_true", help="tiny random model, fresh tiny table, 2 seeds")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--accuracy-only", action="store_true", help="only the exhaustive accuracy pass (fills the cache)")
    ap.add_argument("--shard", default=None, metavar="I/N",
                    help="with --accuracy-only: score only the I-th of N contiguous parts of the shapes (0-based), "
                         "so N processes can fill one cache side by side (the cache file is locked per write)")
    args = ap.parse_args()
    part_of = shard(args.shard, args.accuracy_only) if args.shard else None  # checked before the model loads
    logging.basicConfig(level=os.environ.get("AMOEBA_LOG", "WARNING"))
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(int(os.environ.get("AMOEBA_THREADS", "2")))
    from search.cli import _widths
    from search.evolutionary import run_optuna
    from benchmarks._interval_promotion import run_interval
    from search.hierarchical import run_hierarchical

    promotions = ("value", "interval")  # search.hierarchical's rule, and the earlier one it replaced
    from search.objectives import AccuracyTable, MultiFidelityAccuracy
    from search.latency import LatencyObjective
    from search.pareto import hypervolume, pareto_indices
    from search.problem import SearchProblem
    from search.space import SearchSpace

    if args.quick:
        work = Path(tempfile.gettempdir()) / "amoeba-bench-quick-mf"
        args.strategy, args.root = quick_setup(work)
        args.run, args.seeds, args.seq_len, args.windows, args.rungs = work / "run", min(args.seeds, 2), 32, 8, "2,8"
        args.widths = "0.5:1:1/8"
    if args.rungs is None:
        args.rungs = default_rungs(args.windows)
    if not args.strategy.is_file():
        sys.exit(f"error: strategy {args.strategy} not found (make one with `amoeba select`, or use --quick)")
    from amoeba_core.strategy import Strategy

    strat = Strategy.load(args.strategy)
    depths = parse_ints(args.depths) if args.depths else tuple(sorted(strat.depths)[-16:])
    attn: tuple[float, ...] | None = None
    if args.attn_widths == "groups":
        from amoeba_core.shape import ModelGeometry

        attn = ModelGeometry(**strat.geometry).attn_widths_all_groups()
    elif args.attn_widths:
        attn = _widths(args.attn_widths)
    space = SearchSpace.from_strategy(args.strategy, model=args.model, widths=_widths(args.widths), depths=depths,
                                      attn_widths=attn)
    table = AccuracyTable(args.run)
    ladders = [parse_ints(x) for x in args.rungs.split(";") if x.strip()]
    # The exhaustive pass scores the full budget in one go; every lower rung of any ladder is a prefix
    # of those windows (derived from the stored per-window sums, exactly what scoring them alone gives).
    mf = MultiFidelityAccuracy.from_stage1(args.strategy, table, split="val", seq_len=args.seq_len,
                                           max_windows=args.windows, rungs=(args.windows,))
    # Each ladder under both promotion rules, side by side on the same cache: "hierarchical-mf[...]" is
    # search.hierarchical's ("value"), "hierarchical-mf-interval[...]" the earlier rule
    # (benchmarks/_interval_promotion.py).
    mfs = {f"hierarchical-mf{'' if rule == 'value' else '-' + rule}[{','.join(map(str, lad))}]":
           MultiFidelityAccuracy(mf.run_windows, table, mf.base, mf.rungs[-1], args.seq_len, lad, mf.window_doc)
           for rule in promotions for lad in ladders}
    shapes = space.shapes()
    full_tokens = mf.tokens(-1)
    axes = (f"{len(space.attn_widths)} attention x {len(space.widths)} MLP widths" if space.attn_widths
            else f"{len(space.widths)} widths")
    print(f"space: {len(space.depths)} depths x {axes} = {space.size} shapes "
          f"({space.model}, {args.device}/{args.flow} {args.phase}); full budget {mf.rungs[-1]} x {args.seq_len} "
          f"tokens; ladders {[list(lad) for lad in ladders]}, promotion rules {list(promotions)}", flush=True)
    t0, load0 = time.perf_counter(), loadavg()
    # Width by width, shallow to deep: the evaluator reuses the hidden states of a shared prefix.
    todo = sorted(shapes, key=lambda s: (s.attn_width or 0.0, s.width, s.depth))
    if part_of is not None:
        part, parts = part_of
        todo = todo[len(todo) * part // parts: len(todo) * (part + 1) // parts]
    for k, s in enumerate(todo, 1):
        mf.score(s, -1)
        if k % 8 == 0 or k == len(todo):
            dt = time.perf_counter() - t0
            print(f"  exhaustive {k}/{len(todo)} ({dt:.0f} s, {mf.tokens_run} tokens run here)", flush=True)
    exhaustive_s = time.perf_counter() - t0
    if args.accuracy_only:
        print(f"accuracy pass done ({exhaustive_s:.0f} s)")
        return
    table_origin = ensure_table(args.device, args.flow, space.model, args.phase, space.depths, space.widths,
                                args.root) if not args.quick else "quick: profiled here (tiny)"
    latency = LatencyObjective(args.device, args.flow, space.model, args.phase, root=args.root)
    L = [latency(s).ms for s in shapes]
    full = [mf.score(s, -1) for s in shapes]
    A = [r.top1_acc for r in full]
    ref = (max(L) * 1.01, min(A))
    hv_full = hypervolume(L, A, *ref)
    front = pareto_indices(L, A)
    front_keys = {shapes[i].key for i in front}
    front_acc = sorted(A[i] for i in front)
    front_gap = statistics.median(b - a for a, b in zip(front_acc, front_acc[1:])) if len(front) > 1 else None
    target = args.target * hv_full
    exhaustive_tokens = space.size * full_tokens
    oracle = oracle_shapes(L, A, ref, target)
    eval_seconds = sum(r.seconds or 0.0 for r in full)
    print(f"exhaustive: {len(front)} front shapes, hypervolume {hv_full:.6g}; {mf.n_evaluated} rung scores run "
          f"in {exhaustive_s:.0f} s", flush=True)

    def full_only(shape: Any) -> Any:
        return mf.score(shape, -1)

    results: dict[str, list[dict]] = {}
    for method in [*mfs, *METHODS[1:]]:
        seeds = [0] if method.startswith("hierarchical") else list(range(args.seeds))
        for seed in seeds:
            p = SearchProblem(space, mfs.get(method, full_only), latency)
            t1 = time.perf_counter()
            if method.startswith("hierarchical-mf-interval"):
                run_interval(p, tol=0.0, max_evaluations=space.size)
            elif method.startswith("hierarchical"):
                run_hierarchical(p, tol=0.0, max_evaluations=space.size)
            else:
                def reached(study: optuna.Study, _: object, p: SearchProblem = p) -> None:
                    hv = hypervolume([e.latency_ms for e in p.history], [e.accuracy for e in p.history], *ref)
                    if hv >= target:  # stop as soon as the target is reached: the count is all we need
                        study.stop()

                run_optuna(p, method, n_trials=8 * space.size, seed=seed, max_evaluations=space.size,
                           population_size=10, n_startup_trials=10, callbacks=[reached])
            need = first_reach(p, ref, target)
            screened = len(p.rung_of) if p.fidelity is not None else len(p.history)
            results.setdefault(method, []).append({
                "seed": seed, "tokens_to_target": need,
                "cost_fraction": None if need is None else need / exhaustive_tokens,
                "full_budget_shapes_to_target": None if need is None else
                sum(1 for t, e in p.events if e is not None and t <= need),
                "shapes_scored": screened, "full_budget_shapes": len(p.history), "tokens_total": p.tokens,
                "seconds": round(time.perf_counter() - t1, 3),
                **({"spent_to_target_by_rung": spent} if (spent := spending(p, need, exhaustive_tokens, front_keys))
                   else {})})
        fr = [r["cost_fraction"] for r in results[method]]
        print(f"  {method:16s} cost fraction to {args.target:.0%} HV: "
              f"{[None if f is None else round(f, 3) for f in fr]}", flush=True)

    summary: dict[str, dict[str, Any]] = {}
    for method, rs in results.items():
        fr = [r["cost_fraction"] if r["cost_fraction"] is not None else 1.0 for r in rs]
        summary[method] = {"cost_fraction": statistics.median(fr), "cost_fraction_per_seed": fr,
                           "reached_all": all(r["cost_fraction"] is not None for r in rs), "runs": len(rs)}
    rnd = summary["random"]["cost_fraction"]
    for m in summary:
        summary[m]["random_over_method"] = rnd / summary[m]["cost_fraction"]
    best = min(summary, key=lambda m: summary[m]["cost_fraction"])
    print(f"oracle floor (fewest full-budget shapes reaching the target, chosen knowing the truth): "
          f"{oracle} of {space.size} = {oracle / space.size:.3f}")
    print(f"\n{'method':16s} {'cost frac':>9s} {'random/x':>9s}")
    for m, s in summary.items():
        print(f"{m:16s} {s['cost_fraction']:9.3f} {s['random_over_method']:8.2f}x")

    rung_ci = {}
    for m in mfs.values():  # a window count shared by several ladders (or rules) is summarised once
        for r, n in enumerate(m.rungs):
            if str(n) in rung_ci:
                continue
            widths_ci = sorted((rec.top1_hi - rec.top1_lo) / 2 for rec in (m.score(s, r) for s in shapes))
            rung_ci[str(n)] = {"windows": n, "tokens": m.tokens(r),
                               "median_top1_ci90_half_width": statistics.median(widths_ci)}
    out = args.out or REPO / "benchmarks/results" / ("search_efficiency_quick.json" if args.quick
                                                      else "search_efficiency.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from collections import Counter

    lat_sources = dict(Counter(latency(s).source + (" (extrapolated)" if latency(s).extrapolated else "")
                               for s in shapes))
    out.write_text(json.dumps({
        "benchmark": "search_efficiency", "quick": args.quick, "strategy": rel(args.strategy),
        "model": space.model, "device": args.device, "flow": args.flow, "phase": args.phase,
        "latency_table": table_origin, "latency_sources": lat_sources,
        "space": {"depths": list(space.depths), "widths": list(space.widths), "size": space.size,
                  **({"attn_widths": list(space.attn_widths), "widths_are": "MLP widths"}
                     if space.attn_widths else {})},
        "accuracy": {"metric": "next-token top-1 (held-out val split), 90% bootstrap interval over windows",
                     "seq_len": args.seq_len, "full_budget_windows": mf.rungs[-1],
                     "window_choice": "windows evenly spaced over the val split, rungs take them in bit-reversal "
                                      "order (each rung contains the previous)",
                     "ladders": [list(lad) for lad in ladders],
                     "full_budget_tokens_per_shape": full_tokens, "exhaustive_tokens": exhaustive_tokens,
                     "exhaustive_seconds_this_run": round(exhaustive_s, 1), "rung_scores_run": mf.n_evaluated,
                     "exhaustive_eval_seconds": round(eval_seconds, 1),
                     "exhaustive_eval_note": "sum of per-shape evaluation seconds stored with the scores (each "
                                             "from the run that first scored the shape; this run's threads and "
                                             "load average under environment)",
                     "rungs_ci": rung_ci},
        "target_fraction": args.target, "reference_point": {"latency_ms": ref[0], "accuracy": ref[1]},
        "exhaustive": {"hypervolume": hv_full, "front": [shapes[i].grid_key for i in front],
                       "front_share_of_space": len(front) / space.size,
                       "front_median_accuracy_gap": front_gap,
                       "front_gap_note": "median top-1 difference between front shapes adjacent in accuracy (compare "
                                         "with rungs_ci's half-widths)",
                       "oracle_cost_fraction": oracle / space.size,
                       "oracle_note": "fewest shapes (greedy by hypervolume gain, chosen knowing the truth) whose "
                                      "full-budget scores reach the target: a floor no method can beat without "
                                      "scoring those shapes at the full budget"},
        "settings": {"nsga2_population": 10, "tpe_startup_trials": 10, "seeds": args.seeds,
                     "hierarchical": "tol=0 (runs to exhaustion; the cost is when 99% is first reached); "
                                     "deterministic, one run",
                     "hierarchical-mf[...]": "screens at the first rung of the ladder; promotes one rung while no "
                                             "faster-or-equal shape is better by a paired 98% interval excluding 0 "
                                             "and the upper end of its window-adjusted posterior adds hypervolume to "
                                             "the full-budget front; the open shape with the largest expected "
                                             "hypervolume gain per token left on its ladder is raised first "
                                             "(search.hierarchical's rule, promotion='value')",
                     "hierarchical-mf-interval[...]": "the same, with the earlier promotion rule "
                                                      "(promotion='interval', benchmarks/_interval_promotion.py): "
                                                      "the most-raised open shape first (its "
                                                      "ladder is finished before cheaper rungs of others), by the "
                                                      "gain of its raw interval's upper end among those",
                     "cost": "tokens run through the model (windows x seq_len), charged as if evaluated "
                             "(scores come from the exhaustive pass's cache)"},
        "results": results, "summary": summary, "best_method": best,
        "goals": {"best_cost_fraction_max": 0.15, "random_over_best_min": 3.0,
                  "met": summary[best]["cost_fraction"] <= 0.15 and summary[best]["random_over_method"] >= 3.0},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "optuna": optuna.__version__, "threads": torch.get_num_threads(),
                        "loadavg_before": load0, "loadavg_after": loadavg()},
    }, indent=2))
    print(f"wrote {rel(out)}")


if __name__ == "__main__":
    main()
