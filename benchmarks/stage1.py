"""Stage 1 on SmolLM2: test-split perplexity of DP depth + importance width vs baselines.

Rows: depths {30, 27, 24, 21, 18, 15}; columns: widths {1, 0.875, 0.75, 0.625}. For each cell:

* ``dp``        the strategy's DP layers + its chosen width ranking (AmoebaLLM Stage 1),
* ``drop_last`` the first ``d`` layers + the chosen width ranking,
* ``shortgpt``  ShortGPT block-influence layers (calibration split) + the chosen width ranking,
* ``dp_magnitude`` the DP layers + uniform weight-magnitude width ranking (no data).

All four are scored side by side in one run on the same test windows (perplexity, stride =
window length, see amoeba_core.evaluate), and top-1 next-token accuracy is recorded too. Each
number carries a 90% bootstrap interval (``ppl_ci90``, ``top1_ci90``: resampling documents when
the windows span at least 8 of them, else windows), and each cell compares ``dp`` with every
other method on the same windows by a paired-difference interval (``paired``: ``dp`` minus the
other; "not significant" when the interval contains 0). The summary counts cells where DP is
significantly better / worse / not distinguishable.
The strategy comes from ``--strategy`` (default runs/smollm2/strategy.yaml, then
benchmarks/results/smollm2_strategy.yaml); if none matches the model, selection is run here.

    python benchmarks/stage1.py           # full table (about 80 shapes)
    python benchmarks/stage1.py --quick   # depths {30, 24, 15} x widths {1, 0.75}, 1 window
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.data import data_record, split_docs, token_windows, window_docs  # noqa: E402
from amoeba_core.depth import block_influence, block_influence_layers, drop_last  # noqa: E402
from amoeba_core.errors import AmoebaError  # noqa: E402
from amoeba_core.evaluate import Evaluator, ShapeScore, compare  # noqa: E402
from amoeba_core.model import load_model  # noqa: E402
from amoeba_core.select import select_strategy  # noqa: E402
from amoeba_core.shape import SubnetShape  # noqa: E402
from amoeba_core.strategy import Strategy  # noqa: E402
from amoeba_core.width import apply_metric  # noqa: E402

DEPTHS = (30, 27, 24, 21, 18, 15)
WIDTHS = (1.0, 0.875, 0.75, 0.625)
METHODS = ("dp", "drop_last", "shortgpt", "dp_magnitude")


def _ci(lo: float | None, hi: float | None, digits: int = 4) -> list[float] | None:
    return None if lo is None or hi is None else [round(lo, digits), round(hi, digits)]


def find_strategy(loaded: object, path: str | None, min_depth: int) -> tuple[Strategy, str]:
    cands = [Path(path)] if path else [REPO / "runs/smollm2/strategy.yaml", REPO / "benchmarks/results/smollm2_strategy.yaml"]
    for p in cands:
        if p.is_file():
            try:
                return Strategy.load(p, expect_fingerprint=loaded.fingerprint), str(p)  # type: ignore[attr-defined]
            except AmoebaError as e:
                print(f"skipping {p}: {e}")
    print("no matching strategy: running selection now")
    return select_strategy(loaded, min_depth, WIDTHS), "selected in this run"  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--strategy", default=None)
    ap.add_argument("--windows", type=int, default=2, help="test windows of --seq-len tokens (0: the whole split)")
    ap.add_argument("--split", default="test", help="test, or one source's part: test-topics, test-stdlib")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--bi-windows", type=int, default=4, help="calibration windows for ShortGPT block influence")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baselines-only", action="store_true",
                    help="score only drop_last/shortgpt rows into the score cache (width selection run here); "
                         "use while `amoeba select` is still running")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/stage1.json"))
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    depths, widths = (DEPTHS, WIDTHS) if not args.quick else ((30, 24, 15), (1.0, 0.75))
    windows = 1 if args.quick else (args.windows or None)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    n = loaded.geometry.n_layers
    depths = tuple(d for d in depths if d <= n) or (n, max(1, n // 2))
    if args.baselines_only:
        from amoeba_core.select import select_width

        strategy, _, _ = select_width(loaded, Strategy.trivial(loaded.geometry, loaded.fingerprint, loaded.source, WIDTHS))
        source = "width selection only"
        print(f"width metric {strategy.width_metric}, width id {strategy.width_id}", flush=True)
    else:
        strategy, source = find_strategy(loaded, args.strategy, min(depths))
    missing = [d for d in depths if d not in strategy.depth_layers]
    if missing:
        raise AmoebaError(f"strategy lacks depths {missing}")
    bi_ids = token_windows(loaded.tokenizer, split_docs("calib"), args.seq_len, args.bi_windows)
    influence = block_influence(loaded, bi_ids)
    layer_sets = {
        "dp": {d: strategy.depth_layers[d] for d in depths},
        "drop_last": drop_last(n, list(depths)),
        "shortgpt": block_influence_layers(influence, list(depths)),
    }
    layer_sets["dp_magnitude"] = layer_sets["dp"]
    magnitude = apply_metric(strategy, loaded, None, "magnitude")
    cache = REPO / "runs/stage1-bench/scores.jsonl"
    ids, owner = window_docs(loaded.tokenizer, split_docs(args.split), args.seq_len, windows)
    evs = {
        "chosen": Evaluator(loaded, strategy, split=args.split, windows=ids, window_doc=owner, seq_len=args.seq_len,
                            cache=cache),
        "magnitude": Evaluator(loaded, magnitude, split=args.split, windows=ids, window_doc=owner,
                               seq_len=args.seq_len, cache=cache),
    }
    rows = []
    for d in depths:
        for w in widths:
            row: dict[str, object] = {"depth": d, "width": w, "params_M": round(loaded.geometry.scaled_dims(d, w).n_params() / 1e6, 2)}
            if args.baselines_only:
                for m in ("drop_last", "shortgpt"):
                    sc = evs["chosen"].score(SubnetShape(layer_sets[m][d], w))
                    print(f"d{d} w{w:.3f} {m}: ppl {sc.ppl:.2f}", flush=True)
                continue
            scores: dict[str, ShapeScore] = {}
            for m in METHODS:
                if m == "dp_magnitude" and w == 1.0:
                    row[m], scores[m] = row["dp"], scores["dp"]
                    continue
                shape = SubnetShape(layer_sets[m][d], w)
                s = evs["magnitude" if m == "dp_magnitude" else "chosen"].score(shape)
                scores[m] = s
                row[m] = {"ppl": round(s.ppl, 4), "ppl_ci90": _ci(s.ppl_lo, s.ppl_hi), "top1_acc": round(s.top1_acc, 4),
                          "top1_ci90": _ci(s.top1_lo, s.top1_hi, 4), "layers": list(shape.layers)}
            row["paired"] = {}
            for m in METHODS[1:]:
                if m == "dp_magnitude" and w == 1.0:
                    continue
                pd = compare(scores["dp"], scores[m], "ppl")
                row["paired"][f"dp - {m}"] = {"ppl_diff": round(pd.diff.value, 4), "ci90": _ci(pd.diff.lo, pd.diff.hi),
                                              "verdict": pd.verdict(lower_is_better=True, names=("dp", m))}
            ppl = {m: row[m]["ppl"] for m in METHODS}  # type: ignore[index]
            row["best"] = min(ppl, key=ppl.get)  # type: ignore[arg-type]
            rows.append(row)
            print(f"d{d:>2} w{w:.3f}  " + "  ".join(f"{m} {ppl[m]:>10.2f}" for m in METHODS) + f"  best={row['best']}  "
                  + "; ".join(f"{k}: {v['verdict']}" for k, v in row["paired"].items()), flush=True)
    if args.baselines_only:
        return
    dp_best_depth = sum(
        1 for r in rows if r["dp"]["ppl"] <= min(r["drop_last"]["ppl"], r["shortgpt"]["ppl"])  # type: ignore[index]
    )
    width_rows = [r for r in rows if r["width"] < 1.0]
    chosen_best_width = sum(1 for r in width_rows if r["dp"]["ppl"] <= r["dp_magnitude"]["ppl"])  # type: ignore[index]
    geo = lambda m: math.exp(sum(math.log(r[m]["ppl"]) for r in rows) / len(rows))  # type: ignore[index]  # noqa: E731
    verdicts = {f"dp - {m}": {"dp better": 0, f"{m} better": 0, "not significant": 0} for m in METHODS[1:]}
    for r in rows:
        for k, v in r["paired"].items():  # type: ignore[union-attr]
            verdicts[k][v["verdict"]] += 1
    result = {
        "benchmark": "stage1",
        "model": loaded.source,
        "fingerprint": loaded.fingerprint,
        "strategy": os.path.relpath(source, REPO) if Path(source).exists() else source,  # no absolute path
        "depth_metric": strategy.metric,
        "width_metric": strategy.width_metric,
        "strategy_stats": strategy.stats,
        "split": args.split,
        "data": data_record(seq_len=args.seq_len, windows=int(ids.shape[0])),
        "test_tokens_scored": int(ids.shape[0] * (ids.shape[1] - 1)),
        "test_documents": len(set(owner)),
        "interval": "90% bootstrap (amoeba_core.stats), resampling documents (>= 8 of them) or windows",
        "seq_len": args.seq_len,
        "stride": args.seq_len,
        "shortgpt_block_influence": [round(x, 5) for x in influence],
        "shortgpt_calib_tokens": int(bi_ids.numel()),
        "rows": rows,
        "summary": {
            "cells": len(rows),
            "dp_best_depth_method_cells": dp_best_depth,
            "chosen_width_beats_magnitude_cells": chosen_best_width,
            "width_cells": len(width_rows),
            "geomean_ppl": {m: round(geo(m), 3) for m in METHODS},
            "paired_verdicts": verdicts,
        },
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t0, 1),
        "shapes_evaluated": sum(e.n_evaluated for e in evs.values()),
    }
    out = Path(args.out) if not args.quick else Path(args.out).with_name("stage1_quick.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    s = result["summary"]
    print(f"DP best depth method in {s['dp_best_depth_method_cells']}/{s['cells']} cells; chosen width "
          f"({strategy.width_metric}) beats magnitude in {s['chosen_width_beats_magnitude_cells']}/{s['width_cells']}; "
          f"geomean ppl {s['geomean_ppl']}; paired (90%): {s['paired_verdicts']}; wrote {out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
