"""AmoebaLLM against what users would pick instead, at equal latency on this host's PyTorch table.

At budgets of 80%, 65% and 50% of the full model's decode latency (``cpu-host``/``pytorch``
table in the store; each latency says whether it was measured or predicted), each method offers
its most accurate shape within the budget:

* ``amoeba``       AmoebaLLM Stage 1: the committed SmolLM2 strategy (DP depth + importance width),
                   every depth x width of its grid;
* ``shortgpt``     ShortGPT block influence, depth only;
* ``shortened``    Shortened LLaMA's one-shot perplexity criterion, depth only;
* ``flap``         FLAP's fluctuation metric, one width in every layer, full depth;
* ``torch-pruning`` Torch-Pruning's group magnitude importance on MLP channels (see
                   benchmarks/baselines for why attention is left whole).

Each method chooses among its own candidates by perplexity on ``--val-windows`` windows of the
held-out *val* split; the chosen shapes are then scored on ``--test-windows`` windows of the
*test* split (the same tokens for every method), with 90% bootstrap intervals over documents, and
each peer is paired against AmoebaLLM's choice on those tokens (``peer - amoeba``; perplexity:
positive = the peer is worse). ``amoeba_beats_all_peers`` is true at a budget when every peer's
paired perplexity interval lies above 0.

Not run here (said so in the JSON): AmoebaLLM after Stage 2 and the per-shape LoRA protocol
(``stage2``), and a multiple-choice task (``mc_task``).

    python benchmarks/peers.py            # SmolLM2-135M; about 20-30 min on 2 cores
    python benchmarks/peers.py --quick    # tiny random model and a fresh tiny table (CI, seconds)

Scores are cached in ``--work`` (runs/peers): a killed run resumes. Writes
benchmarks/results/peers.json and docs/peers-front.png (``--quick``: peers_quick.json, no figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.evaluate import Evaluator  # noqa: E402
from amoeba_core.model import LoadedModel, load_model  # noqa: E402
from amoeba_core.scores import ShapeScore, compare  # noqa: E402
from amoeba_core.shape import SubnetShape  # noqa: E402
from amoeba_core.strategy import Strategy  # noqa: E402
from benchmarks import baselines as bl  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
BUDGETS = (0.80, 0.65, 0.50)
METHODS = ("amoeba", "shortgpt", "shortened", "flap", "torch-pruning")


def latency_fn(model: str, root: Path | None) -> Any:
    from profiler.lookup import latency_ms

    def lat(shape: SubnetShape, mlp: float | None = None) -> Any:
        if mlp is not None:  # Torch-Pruning: whole attention, narrower MLP
            return latency_ms("cpu-host", "pytorch", model, shape.depth, mlp, root=root, attn_width=1.0)
        return latency_ms("cpu-host", "pytorch", model, shape.depth, shape.width, root=root,
                          attn_width=shape.attn_width)
    return lat


def ensure_table(model: str, root: Path | None, quick: bool) -> None:
    """Profile the cpu-host PyTorch decode table of ``model`` if the store has none (scripts/demo.sh step 1)."""
    from profiler.lookup import latency_ms

    try:
        latency_ms("cpu-host", "pytorch", model, 1 if quick else 30, 1.0, root=root)
        return
    except Exception as e:  # noqa: BLE001 - no table yet: profile it
        print(f"no cpu-host pytorch table for {model} ({str(e).splitlines()[0][:120]}): profiling one")
    depths, widths = ("1,2,3,4", "1,0.5") if quick else ("6,12,18,24,30", "1,0.875,0.75,0.625")
    cmd = [sys.executable, "-m", "amoeba.cli", "profile", "--device", "cpu-host", "--flow", "pytorch", "--model",
           model, "--depths", depths, "--widths", widths, "--phases", "decode", "--prompt-len", "16" if quick else "128",
           "--threads", "1" if quick else "2"] + (["--repeats", "3", "--rounds", "1", "--root", str(root)] if quick else [])
    subprocess.run(cmd, check=True)


def candidates(loaded: LoadedModel, strategy: Strategy, calib: torch.Tensor, calib_eval: Evaluator,
               tp_ratios: tuple[float, ...], flap_widths: tuple[float, ...]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Per method: its candidates ({label, shape, strategy or model, mlp}) and what its criterion computed."""
    n = loaded.geometry.n_layers
    depths = list(range(max(1, n // 5), n + 1))
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    out["amoeba"] = [{"label": strategy.shape(d, w).grid_key, "shape": strategy.shape(d, w), "strategy": strategy}
                     for d in strategy.depths for w in strategy.widths]
    bi, keep = bl.shortgpt_layers(loaded, calib, depths)
    out["shortgpt"] = [{"label": f"d{d}", "shape": SubnetShape(keep[d], 1.0), "strategy": None} for d in depths]
    ppl_drop, keep2 = bl.shortened_ppl_layers(calib_eval, n, depths)
    out["shortened"] = [{"label": f"d{d}", "shape": SubnetShape(keep2[d], 1.0), "strategy": None} for d in depths]
    flap = bl.flap_strategy(loaded, calib, flap_widths)
    out["flap"] = [{"label": f"w{w:g}", "shape": flap.shape(n, w), "strategy": flap} for w in flap_widths]
    for r in tp_ratios:
        pruned = bl.torch_pruning_model(loaded, r)
        out["torch-pruning"].append({"label": f"mlp{bl.mlp_keep(loaded, pruned):.3f}",
                                     "shape": SubnetShape(tuple(range(n)), 1.0), "model": pruned,
                                     "mlp": bl.mlp_keep(loaded, pruned)})
    info = {"block_influence": [round(x, 5) for x in bi], "single_removal_calib_ppl": [round(x, 3) for x in ppl_drop]}
    return out, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--strategy", default=str(RESULTS / "smollm2_strategy.yaml"))
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--val-windows", type=int, default=8)
    ap.add_argument("--test-windows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="score caches (default runs/peers[-quick])")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(args.work or REPO / "runs" / ("peers-quick" if args.quick else "peers"))
    work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="amoeba-peers-")) if args.quick else None
    if args.quick:
        from profiler.device import detect_host, save_device

        save_device(detect_host(threads=1), root)
        loaded = load_model("tiny")
        strategy = Strategy.trivial(loaded.geometry, loaded.fingerprint, "tiny", widths=(1.0, 0.75, 0.5))
        model_name, seq, n_cal, n_val, n_test = "tiny", 32, 2, 2, 4
        tp_ratios, flap_widths = (0.25, 0.5), (1.0, 0.75, 0.5)
    else:
        loaded = load_model("smollm2-135m")
        strategy = Strategy.load(Path(args.strategy), expect_fingerprint=loaded.fingerprint)
        model_name, seq, n_cal, n_val, n_test = "smollm2-135m", args.seq_len, args.calib_windows, args.val_windows, args.test_windows
        tp_ratios, flap_widths = (0.125, 0.25, 0.375, 0.5, 0.625), (1.0, 0.875, 0.75, 0.625, 0.5, 0.375)
    ensure_table(model_name, root, args.quick)
    lat = latency_fn(model_name, root)

    def evaluator(split: str, n_win: int, strat: Strategy | None, model: LoadedModel | None = None, tag: str = "") -> Evaluator:
        m = model or loaded
        return Evaluator(m, strat if strat is not None and strat.model_fingerprint == m.fingerprint else None, split=split,
                         seq_len=seq, max_windows=n_win, spread=True, cache=work / f"{split}-{tag or 'base'}.jsonl")

    calib_eval = evaluator("calib", n_cal, None, tag="calib")
    cands, info = candidates(loaded, strategy, calib_eval.ids.cpu(), calib_eval, tp_ratios, flap_widths)
    full = lat(strategy.shape(loaded.geometry.n_layers, 1.0))
    evals: dict[tuple[str, str], Evaluator] = {}

    def score(method: str, c: dict[str, Any], split: str) -> ShapeScore:
        model = c.get("model")
        strat = c.get("strategy")
        tag = f"{method}-{c['label']}" if model is not None else (f"{method}" if strat is not None else "depth")
        key = (split, tag)
        if key not in evals:
            evals[key] = evaluator(split, n_val if split == "val" else n_test, strat, model, tag)
        return evals[key].score(c["shape"])

    for method, cs in cands.items():  # latency of every candidate once
        for c in cs:
            est = lat(c["shape"], c.get("mlp"))
            c["ms"], c["source"] = float(est.ms), str(est.source)
    budgets: list[dict[str, Any]] = []
    for b in BUDGETS:
        limit = b * full.ms
        row: dict[str, Any] = {"budget": b, "budget_ms": round(limit, 4), "methods": {}}
        chosen: dict[str, tuple[dict[str, Any], ShapeScore]] = {}
        for method, cs in cands.items():
            fits = [c for c in cs if c["ms"] <= limit]
            if not fits:
                row["methods"][method] = {"shape": None, "note": "no candidate within the budget"}
                continue
            best = min(fits, key=lambda c: score(method, c, "val").ppl)
            chosen[method] = (best, score(method, best, "test"))
            print(f"budget {b:.0%} {method:14s} {best['label']:22s} {best['ms']:.3f} ms ({best['source']}) "
                  f"test ppl {chosen[method][1].ppl:.2f}", flush=True)
        ref = chosen.get("amoeba")
        beats = ref is not None
        for method, (c, sc) in chosen.items():
            entry: dict[str, Any] = {
                "shape": c["label"], "layers": list(c["shape"].layers), "latency_ms": round(c["ms"], 4),
                "latency_source": c["source"], "test_ppl": round(sc.ppl, 4), "test_ppl_ci90": [sc.ppl_lo, sc.ppl_hi],
                "test_top1": round(sc.top1_acc, 5), "test_top1_ci90": [sc.top1_lo, sc.top1_hi]}
            if ref is not None and method != "amoeba":
                d, t = compare(sc, ref[1], "ppl"), compare(sc, ref[1], "top1")
                entry["ppl_minus_amoeba"] = {"diff": round(d.diff.value, 4), "ci90": [round(d.diff.lo, 4), round(d.diff.hi, 4)],
                                             "verdict": d.verdict(True, (method, "amoeba"))}
                entry["top1_minus_amoeba"] = {"diff": round(t.diff.value, 5), "ci90": [round(t.diff.lo, 5), round(t.diff.hi, 5)],
                                              "verdict": t.verdict(False, (method, "amoeba"))}
                beats &= d.diff.lo > 0
            row["methods"][method] = entry
        row["amoeba_beats_all_peers"] = bool(beats)  # every peer that offers a shape is worse, significantly
        budgets.append(row)
    result = {
        "benchmark": "peers", "quick": args.quick, "command": " ".join(["python", "benchmarks/peers.py", *sys.argv[1:]]),
        "model": loaded.source,
        "strategy": "trivial (quick)" if args.quick else os.path.relpath(args.strategy, REPO),
        "where": f"CPU ({platform.machine()}, {os.cpu_count()} logical cores, torch threads {args.threads})",
        "host_noise": {"loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "latency": {"table": f"cpu-host/pytorch/{model_name} decode, prompt 128", "full_ms": round(full.ms, 4),
                    "full_source": str(full.source), "budgets": "share of the full model's latency"},
        "metric": f"test-split perplexity and top-1 on {n_test} windows x {seq} tokens (same tokens for every method); "
                  f"choice among candidates on {n_val} val windows; calibration {n_cal} calib windows",
        "interval": "90% bootstrap over documents (amoeba_core.stats); paired rows resample the same units",
        "criteria": info, "budgets": budgets,
        "candidates": {m: [{"shape": c["label"], "latency_ms": round(c["ms"], 4), "source": c["source"]} for c in cs]
                       for m, cs in cands.items()},
        "not_run": {"stage2": "AmoebaLLM after Stage 2 and each method after the same per-shape LoRA budget were not run "
                              "(CPU-only host: a per-shape LoRA of SmolLM2 for every method x budget did not fit the session)",
                    "mc_task": "no local multiple-choice task was scored"},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out) if args.out else RESULTS / ("peers_quick.json" if args.quick else "peers.json")
    out.write_text(json.dumps(result, indent=2, default=float))
    if not args.quick:
        plot(result, REPO / "docs" / "peers-front.png")
    print(json.dumps([{"budget": r["budget"], "amoeba_beats_all_peers": r["amoeba_beats_all_peers"]} for r in budgets]))
    print(f"wrote {out} ({result['wall_seconds']} s)")


def plot(result: dict[str, Any], path: Path) -> None:
    """Test perplexity against latency, one line per method over the budgets, 90% error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        pts = [r["methods"][method] for r in result["budgets"] if r["methods"].get(method, {}).get("shape")]
        if not pts:
            continue
        x = [p["latency_ms"] for p in pts]
        y = [p["test_ppl"] for p in pts]
        err = [[p["test_ppl"] - p["test_ppl_ci90"][0] for p in pts], [p["test_ppl_ci90"][1] - p["test_ppl"] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method, lw=2.5 if method == "amoeba" else 1.2)
    ax.set_xlabel(f"decode latency, ms/token ({result['latency']['table']})")
    ax.set_ylabel("test perplexity (lower is better), 90% CI")
    ax.set_yscale("log")
    ax.set_title(f"{result['model']}: best shape per method at 80/65/50% of full latency")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
