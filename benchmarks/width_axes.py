"""One width ratio vs separate attention/MLP widths: the accuracy-latency front of SmolLM2.

SmolLM2-135M has 9 query heads in 3 KV groups, so one width ratio cuts attention in steps of 3
heads (w >= 0.875 keeps 9, w 0.8125..0.625 keep 6) while the MLP follows the ratio. With
separate axes, attention keeps 9 or 6 heads (a1.000 / a0.667: every KV group kept, whole query
heads dropped per group) whatever the MLP width.

Two spaces of the same size, scored exhaustively (the same number of accuracy evaluations):

* ``one_ratio``: depths {30, 24, 18} x widths {1, 0.875, 0.75, 0.625} (the committed strategy's
  grid: 12 shapes);
* ``separate``: the same depths x attention {1, 0.667} x MLP {1, 0.75} (12 shapes): the full
  model, the MLP-only cut, the attention-only cut and both.

Two of the four separate pairs are the same networks as one-ratio widths (``a1.000-m1.000`` = ``w1``,
``a0.667-m0.750`` = ``w0.750``: same layers, heads and channels, so the same logits); their scores are
computed once and reused (``score_from`` names the shape scored), so 18 distinct forward passes
give 12 scored shapes per space.

Accuracy: top-1 next-token accuracy (and perplexity) on the val split, ``--windows`` windows of
256 tokens, with the committed strategy benchmarks/results/smollm2_strategy.yaml (DP depths,
FLAP + bias-compensation width rankings); 90% bootstrap intervals per shape and paired
differences (same windows) between the two spaces' best shapes under each budget.

Latency: the cpu-host PyTorch table (float32, decode one token with a 128-token cache,
``--threads`` threads, paired protocol against d30-w1.000). Missing rows are profiled first at
depths 18/24/30 (one round of at least 1 s per row: the host is shared): the one-ratio widths,
and the two separate pairs that are not a one-ratio network (``a1.000-m0.750``, the MLP-only
cut, and ``a0.667-m1.000``, the attention-only cut). The other two pairs read the row of their
one-ratio twin, so every latency is a measured row; a row's source and 90% interval are kept.

Budgets: 85%, 70% and 55% of the full model's latency. Results: benchmarks/results/width_axes.json.

    python benchmarks/width_axes.py              # profile what is missing (2 threads), score the shapes
    python benchmarks/width_axes.py --no-profile --threads 1   # the table's 1-thread rows as they are
                                                 # (the committed result: see "latency" in the JSON)
    python benchmarks/width_axes.py --only-profile   # the latency rows only
    python benchmarks/width_axes.py --only-score     # the accuracy cache only (runs/width_axes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.evaluate import Evaluator, ShapeScore, compare  # noqa: E402
from amoeba_core.model import load_model  # noqa: E402
from amoeba_core.shape import SubnetShape  # noqa: E402
from amoeba_core.strategy import Strategy  # noqa: E402
from amoeba_core.shape import width_key  # noqa: E402
from profiler.lookup import LatencyModel  # noqa: E402
from search.pareto import hypervolume, pareto_indices  # noqa: E402
from search.space import SearchSpace  # noqa: E402
from profiler.measure import cpu_model  # noqa: E402

from benchmarks._profile_run import loadavg  # noqa: E402

MODEL = "smollm2-135m"
STRATEGY = REPO / "benchmarks/results/smollm2_strategy.yaml"
DEPTHS = (30, 24, 18)
ONE_RATIO = (1.0, 0.875, 0.75, 0.625)
ATTN = (1.0, 0.667)
MLP = (1.0, 0.75)  # the separate space's MLP widths
BUDGETS = (0.85, 0.70, 0.55)  # fractions of the full model's latency
PROMPT_LEN, THREADS, PHASE = 128, 2, "decode"


def profile_missing(root: Path | None, threads: int) -> dict:
    """Time the latency rows the two spaces need that the table lacks (depths 18/24/30, paired protocol
    against d30-w1.000): the one-ratio widths, and the separate pairs that are not the same network
    as a one-ratio width (those read the one-ratio row)."""
    from amoeba_core.shape import ModelGeometry
    from profiler.measure import MeasureConfig
    from profiler.plan import make_plan, run_profile

    g = ModelGeometry.preset(MODEL)
    sig = {(g.scaled_dims(1, w).n_heads, g.scaled_dims(1, w).intermediate) for w in ONE_RATIO}
    pairs = [(a, m) for a in ATTN for m in MLP
             if (g.scaled_dims(1, m, a).n_heads, g.scaled_dims(1, m, a).intermediate) not in sig]
    cfg = MeasureConfig(rounds=1, min_seconds=1.0, max_seconds=2.0)
    out = {"measure": {"rounds": cfg.rounds, "min_seconds": cfg.min_seconds, "max_seconds": cfg.max_seconds},
           "threads": threads}
    for name, widths, attn in [("one_ratio", ONE_RATIO, ())] + [(f"a{a:.3f}-m{m:.3f}", (m,), (a,)) for a, m in pairs]:
        plan = make_plan("cpu-host", "pytorch", MODEL, DEPTHS, widths, (PHASE,), PROMPT_LEN, "float32", threads,
                         sparse=True, measure_cfg=cfg, attn_widths=attn)
        t0 = time.perf_counter()
        res = run_profile(plan, root, lambda desc, done, total: print(f"  profile {name}: {desc} ({done}/{total})",
                                                                       flush=True))
        out[name] = {"rows_written": res.written, "rows_present": res.skipped, "contended_rows": res.contended,
                     "seconds": round(time.perf_counter() - t0, 1), "depths_timed": list(plan.measured_depths)}
        print(f"profile {name}: {res.written} rows timed, {res.skipped} present", flush=True)
    return out


def _ci(lo: float | None, hi: float | None, digits: int = 4) -> list[float] | None:
    return None if lo is None or hi is None else [round(lo, digits), round(hi, digits)]


def _row(shape: SubnetShape, sc: ShapeScore, lat: object) -> dict:
    return {"shape": shape.grid_key, "key": shape.key, "depth": shape.depth,
            "attn_width": shape.axes.attn if shape.separate else None, "mlp_width": shape.width,
            "top1": round(sc.top1_acc, 5), "top1_ci90": _ci(sc.top1_lo, sc.top1_hi, 5),
            "ppl": round(sc.ppl, 3), "ppl_ci90": _ci(sc.ppl_lo, sc.ppl_hi, 3),
            "latency_ms": round(lat.ms, 4), "latency_ci90": _ci(lat.lo_ms, lat.hi_ms),  # type: ignore[attr-defined]
            "latency_source": lat.source, "extrapolated": bool(lat.extrapolated)}  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=4, help="val windows of 256 tokens per shape (default 4)")
    ap.add_argument("--only-profile", action="store_true", help="profile the missing latency rows and stop")
    ap.add_argument("--only-score", action="store_true", help="score the shapes into the cache and stop")
    ap.add_argument("--root", type=Path, default=None, help="profiles root (default: device_profiles)")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"runtime threads of the latency rows "
                    f"(profiled and read; default {THREADS})")
    ap.add_argument("--no-profile", action="store_true", help="use the table as it is (predict what is missing)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    prof = {} if (args.no_profile or args.only_score) else profile_missing(args.root, args.threads)
    if args.only_profile:
        return
    part = None if args.only_score else LatencyModel.open("cpu-host", "pytorch", MODEL, PHASE, PROMPT_LEN, "float32",
                                                          args.root, args.threads)

    def lat_of(shape: SubnetShape) -> object:
        return part.estimate(shape.depth, width_key(shape.width, shape.attn_width))  # type: ignore[union-attr]

    lat = None if part is None else lat_of

    loaded = load_model(MODEL)
    strategy = Strategy.load(STRATEGY, expect_fingerprint=loaded.fingerprint)
    spaces = {
        "one_ratio": SearchSpace.from_strategy(strategy, MODEL, ONE_RATIO, DEPTHS),
        "separate": SearchSpace.from_strategy(strategy, MODEL, MLP, DEPTHS, attn_widths=ATTN),
    }
    assert spaces["one_ratio"].size == spaces["separate"].size
    cache = REPO / "runs/width_axes/scores.jsonl"
    ev = Evaluator(loaded, strategy, split="val", seq_len=256, max_windows=args.windows, cache=cache)
    rows: dict[str, list[dict]] = {}
    scores: dict[str, ShapeScore] = {}
    by_net: dict[tuple, str] = {}  # (layers, heads, kv heads, channels) -> the key scored for that network
    g = loaded.geometry
    for name, space in spaces.items():
        rows[name] = []
        for shape in sorted(space.shapes(), key=lambda s: (-s.depth, -s.axes.attn, -s.width)):
            t0 = time.perf_counter()
            phys = g.scaled(shape)
            net = (shape.layers, phys.n_heads, phys.n_kv_heads, phys.intermediate)
            twin = by_net.setdefault(net, shape.key)
            sc = scores[twin] if twin in scores else ev.score(shape)
            scores[shape.key] = sc
            if lat is None:
                print(f"{name:9s} {shape.grid_key:18s} top1 {sc.top1_acc:.4f} ppl {sc.ppl:8.2f} "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
                continue
            r = _row(shape, sc, lat(shape))
            r["score_from"] = twin if twin != shape.key else None
            rows[name].append(r)
            print(f"{name:9s} {r['shape']:18s} top1 {r['top1']:.4f} ppl {r['ppl']:8.2f} "
                  f"{r['latency_ms']:.3f} ms ({r['latency_source']}) {time.perf_counter() - t0:.1f} s", flush=True)

    if lat is None:
        return
    full_ms = part.estimate(max(DEPTHS), 1.0).ms  # type: ignore[union-attr]
    allp = [r for rs in rows.values() for r in rs]
    ref = (max(r["latency_ms"] for r in allp) * 1.01, min(r["top1"] for r in allp))
    out_spaces = {}
    for name, rs in rows.items():
        front = pareto_indices([r["latency_ms"] for r in rs], [r["top1"] for r in rs])
        out_spaces[name] = {
            "space": spaces[name].to_dict() | {"layers": None},
            "n_evaluations": len(rs),
            "hypervolume": hypervolume([r["latency_ms"] for r in rs], [r["top1"] for r in rs], *ref),
            "front": [rs[i]["shape"] for i in sorted(front, key=lambda i: rs[i]["latency_ms"])],
            "shapes": rs,
        }
    budgets = []
    for frac in BUDGETS:
        b = frac * full_ms
        entry: dict = {"fraction_of_full": frac, "budget_ms": round(b, 4)}
        best = {}
        for name, rs in rows.items():
            ok = [r for r in rs if r["latency_ms"] <= b]
            best[name] = max(ok, key=lambda r: r["top1"]) if ok else None
            entry[name] = best[name]
        a, s = best["one_ratio"], best["separate"]
        if a and s:
            sa, ss = scores[a["key"]], scores[s["key"]]
            same_net = _same_network(a, s)
            entry["same_network"] = same_net
            if not same_net:
                d_top = compare(ss, sa, "top1")
                d_ppl = compare(ss, sa, "ppl")
                entry["separate_minus_one_ratio"] = {
                    "top1": round(d_top.diff.value, 5), "top1_ci90": [round(d_top.diff.lo, 5), round(d_top.diff.hi, 5)],
                    "top1_verdict": d_top.verdict(lower_is_better=False, names=(s["shape"], a["shape"])),
                    "ppl": round(d_ppl.diff.value, 3), "ppl_ci90": [round(d_ppl.diff.lo, 3), round(d_ppl.diff.hi, 3)],
                    "ppl_verdict": d_ppl.verdict(lower_is_better=True, names=(s["shape"], a["shape"]))}
        budgets.append(entry)
        print(f"budget {b:.3f} ms ({frac:.0%}): one ratio {a and a['shape']} {a and a['top1']}, "
              f"separate {s and s['shape']} {s and s['top1']}", flush=True)

    # the question, per depth: what the MLP-only and the attention-only cut cost and save
    sep = {r["shape"]: r for r in rows["separate"]}
    trade = []
    for d in DEPTHS:
        full = sep[f"d{d}-a1.000-m1.000"]
        t = {"depth": d, "full": full["shape"]}
        for name, key in (("mlp_only", f"d{d}-a1.000-m0.750"), ("attn_only", f"d{d}-a0.667-m1.000"),
                          ("both_w0.750", f"d{d}-a0.667-m0.750")):
            r = sep[key]
            saved = full["latency_ms"] - r["latency_ms"]
            lost = full["top1"] - r["top1"]
            t[name] = {"shape": key, "top1_lost": round(lost, 5), "ppl_ratio": round(r["ppl"] / full["ppl"], 3),
                       "ms_saved": round(saved, 3), "ms_saved_fraction": round(saved / full["latency_ms"], 4),
                       "top1_lost_per_ms_saved": round(lost / saved, 6) if saved > 0 else None}
        trade.append(t)
        print(f"d{d}: MLP-only {t['mlp_only']}; attention-only {t['attn_only']}", flush=True)

    res = {
        "what": "front of SmolLM2-135M with one width ratio vs separate attention/MLP widths (same number of "
                "accuracy evaluations, exhaustive), cpu-host PyTorch float32 decode latency",
        "command": "python benchmarks/width_axes.py" + (f" --windows {args.windows}" if args.windows != 4 else "")
                   + (f" --threads {args.threads}" if args.threads != THREADS else "")
                   + (" --no-profile" if args.no_profile else ""),
        "model": MODEL, "strategy": str(STRATEGY.relative_to(REPO)),
        "accuracy": {"split": "val", "seq_len": 256, "windows": ev.n_windows, "tokens_per_shape": ev.n_tokens,
                     "metric": "top-1 next-token accuracy (front); perplexity reported"},
        "latency": {"device": "cpu-host", "flow": "pytorch", "variant": part.variant, "phase": PHASE,
                    "prompt_len": PROMPT_LEN, "threads": part.threads, "full_model_ms": round(full_ms, 4),
                    "sources": "measured rows (paired protocol, drift-corrected ms) at the sparse depths; "
                               "predicted (labelled) elsewhere",
                    "host": f"{cpu_model()}, {os.cpu_count()} logical cores",
                    "loadavg_at_end": loadavg(),
                    "noise": "every row's 90% interval is in latency_ci90 (paired-ratio bootstrap x reference "
                             "level); the load average at the end is the host's load while it was written",
                    "profiled_now": not (args.no_profile or args.only_score)},
        "profiling": prof,
        "spaces": out_spaces,
        "hypervolume_reference": {"latency_ms": round(ref[0], 4), "top1": ref[1]},
        "budgets": budgets,
        "trade_per_depth": trade,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out = REPO / "benchmarks/results/width_axes.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"hypervolume one ratio {out_spaces['one_ratio']['hypervolume']:.5g}, separate "
          f"{out_spaces['separate']['hypervolume']:.5g} -> {out.relative_to(REPO)}")


def _same_network(a: dict, b: dict) -> bool:
    """Whether two rows name the same physical SmolLM2 subnet (same layers, heads and MLP channels)."""
    from amoeba_core.shape import ModelGeometry, parse_shape

    g = ModelGeometry.preset(MODEL)
    ga, gb = (g.scaled_dims(r["depth"], parse_shape(r["shape"]).axes if parse_shape(r["shape"]).attn_width
              is not None else r["mlp_width"]) for r in (a, b))
    return a["key"][-8:] == b["key"][-8:] and (ga.n_heads, ga.intermediate) == (gb.n_heads, gb.intermediate)


if __name__ == "__main__":
    main()
