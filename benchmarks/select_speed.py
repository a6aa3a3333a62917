"""Depth DP cost: candidates of a step scored one by one vs together (issue 13 item 4).

Runs the AmoebaLLM depth DP on SmolLM2's calibration windows twice in one process, each time
with a fresh evaluator (no score cache): ``one`` scores each candidate alone (the evaluator's
one-shape path: its suffix layers over the calibration windows), ``together`` hands every
candidate of a DP step to ``Evaluator.score_many`` (each layer applied once to the stacked states
of all candidates that keep it). Both start from the same memoised prefix states of the full
model. Reported: CPU seconds of the process (``time.process_time``, all threads) and wall
seconds of each, their ratio, whether the DP picks the same layers at every depth, and the
largest relative perplexity difference between the two paths over every shape scored.

CPU time is the figure to read on a shared host: wall time also counts the time other
processes held the cores (the load average before and after is recorded next to it).

    python benchmarks/select_speed.py --min-depth 27 --calib-windows 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amoeba_core.depth import dp_depth  # noqa: E402
from amoeba_core.evaluate import Evaluator  # noqa: E402
from amoeba_core.model import load_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "select_speed.json"


def run(loaded, mode: str, min_depth: int, windows: int, seq_len: int) -> dict:  # noqa: ANN001
    ev = Evaluator(loaded, None, split="calib", seq_len=seq_len, max_windows=windows)
    n = loaded.geometry.n_layers
    c0, t0 = time.process_time(), time.perf_counter()
    kw = {"metric_many": lambda ss: [x.ppl for x in ev.score_many(ss)]} if mode == "together" else {}
    res = dp_depth(n, min_depth, metric=lambda s: ev.score(s).ppl, **kw)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    scores = {k.split("|")[1]: s.ppl for k, s in ev._scores.items()}  # noqa: SLF001
    print(f"{mode}: {res.n_evaluations} evaluations, cpu {cpu:.1f} s, wall {wall:.1f} s, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "evaluations": res.n_evaluations,
            "layers": {str(d): list(v) for d, v in sorted(res.layers.items())}, "scores": scores,
            "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-depth", type=int, default=27)
    ap.add_argument("--calib-windows", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m")
    load_before = round(os.getloadavg()[0], 2)
    one = run(loaded, "one", args.min_depth, args.calib_windows, args.seq_len)
    tog = run(loaded, "together", args.min_depth, args.calib_windows, args.seq_len)
    common = sorted(set(one["scores"]) & set(tog["scores"]))
    max_rel = max(abs(one["scores"][k] / tog["scores"][k] - 1) for k in common)
    result = {
        "command": f"python benchmarks/select_speed.py --min-depth {args.min_depth} "
                   f"--calib-windows {args.calib_windows}",
        "model": "smollm2-135m", "min_depth": args.min_depth, "calib_windows": args.calib_windows,
        "seq_len": args.seq_len, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "load_before": load_before,
        "one": {k: v for k, v in one.items() if k != "scores"},
        "together": {k: v for k, v in tog.items() if k != "scores"},
        "cpu_ratio_one_over_together": round(one["cpu_s"] / tog["cpu_s"], 3),
        "wall_ratio_one_over_together": round(one["wall_s"] / tog["wall_s"], 3),
        "same_picks": one["layers"] == tog["layers"],
        "shapes_compared": len(common),
        "max_rel_ppl_diff": max_rel,
        "note": "one run of each, one after the other on a shared 2-core host: CPU seconds are the figure "
                "to read; wall seconds include the time other processes held the cores",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("one", "together")}, indent=1))


if __name__ == "__main__":
    main()
