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

After fine-tuning (``after_finetuning`` in each budget): every method's chosen shape gets the same
per-shape LoRA budget (``--lora-steps``, benchmarks/baselines/lora.py; ``amoeba-lora`` is the paper's
AmoebaLLM†), and with ``--adapters`` (an ``amoeba finetune`` output over the strategy's grid)
AmoebaLLM after its one-for-all Stage 2 (``amoeba-ft``) re-chooses its shape on val; each peer is
paired against both.

Multiple choice (``--mc-items``, benchmarks/baselines/mc_task.py): every chosen model, as pruned
and after fine-tuning, is also scored through lm-eval-harness (:mod:`amoeba_core.tasks`, the
physical subnet with any adapters folded in) on a local task written from the *test* split's
documents: which of 4 continuations follows a passage (``--mc-items``, 60 by default: about 40 s per
model on 2 cores). ``acc`` with a 90% bootstrap over items,
and each peer paired against AmoebaLLM on the same items.

    python benchmarks/peers.py --lora-steps 0   # SmolLM2-135M as pruned; about 20-30 min on 2 cores
    amoeba finetune --strategy benchmarks/results/smollm2_strategy.yaml --steps 400 --out runs/peers/stage2 \
        --k 3 --seq-len 128 --batch 1 --lr 1e-3 --rank 16 --min-depth 12
    python benchmarks/peers.py --adapters runs/peers/stage2   # + 400-step per-shape LoRA per chosen shape
    python benchmarks/peers.py --quick    # tiny random model and a fresh tiny table (CI, seconds)
    python benchmarks/peers.py --replot   # redraw docs/peers-front.png from peers.json

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
COLORS = {"amoeba": "C0", "amoeba-ft": "C0", "amoeba-lora": "C9", "shortgpt": "C1", "shortened": "C2", "flap": "C3",
          "torch-pruning": "C4"}


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
    ap.add_argument("--lora-steps", type=int, default=400,
                    help="per-shape LoRA steps for every chosen shape (the paper's baseline protocol; 0: not run)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--mc-items", type=int, default=60,
                    help="items of the local multiple-choice task scored through lm-eval (0: not run)")
    ap.add_argument("--adapters", default=None,
                    help="one-for-all Stage 2 output (amoeba finetune --out) for AmoebaLLM after fine-tuning")
    ap.add_argument("--replot", action="store_true", help="only redraw docs/peers-front.png from peers.json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((RESULTS / "peers.json").read_text()), REPO / "docs" / "peers-front.png")
        return
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
    mc = MCScorer(work, loaded.tokenizer, 12 if args.quick else args.mc_items) if args.mc_items > 0 else None
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
    picked: dict[float, dict[str, tuple[dict[str, Any], ShapeScore]]] = {}
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
            if mc is not None:
                best["mc"] = mc.score(f"{method}-{best['label']}", lambda c=best: pruned_model(loaded, c))
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
                if mc is not None:
                    entry["mc_minus_amoeba"] = mc.paired(c["mc"], ref[0]["mc"], (method, "amoeba"))
            if mc is not None:
                entry["mc_acc"] = mc.entry(c["mc"])
            row["methods"][method] = entry
        row["amoeba_beats_all_peers"] = bool(beats)  # every peer that offers a shape is worse, significantly
        budgets.append(row)
        picked[b] = chosen
    finetuned = after_finetuning(args, loaded, strategy, cands, picked, lat, work, seq, n_val, n_test, mc) \
        if args.lora_steps > 0 or args.adapters or args.quick else None
    if finetuned is not None:
        for row in budgets:
            row["after_finetuning"] = finetuned["budgets"][row["budget"]]
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
        "mc_task": mc.describe() if mc is not None else None,
        "interval": "90% bootstrap over documents (amoeba_core.stats); paired rows resample the same units",
        "criteria": info, "budgets": budgets,
        "candidates": {m: [{"shape": c["label"], "latency_ms": round(c["ms"], 4), "source": c["source"]} for c in cs]
                       for m, cs in cands.items()},
        "finetuning": finetuned["setup"] if finetuned else None,
        "not_run": {k: v for k, v in {
            "stage2": None if finetuned else "no per-shape LoRA (--lora-steps 0) and no Stage 2 adapters (--adapters)",
            "mc_task": None if mc is not None else "no multiple-choice task scored (--mc-items 0)"}.items() if v},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out) if args.out else RESULTS / ("peers_quick.json" if args.quick else "peers.json")
    out.write_text(json.dumps(result, indent=2, default=float))
    if not args.quick:
        plot(result, REPO / "docs" / "peers-front.png")
    print(json.dumps([{"budget": r["budget"], "amoeba_beats_all_peers": r["amoeba_beats_all_peers"]} for r in budgets]))
    print(f"wrote {out} ({result['wall_seconds']} s)")


def pruned_model(loaded: LoadedModel, c: dict[str, Any]) -> Any:
    """The physical model of one candidate as pruned (Torch-Pruning's model as the library left it)."""
    from amoeba_core.tasks import subnet_model

    if c.get("model") is not None:
        return c["model"].model.eval()
    return subnet_model(loaded, c.get("strategy"), c["shape"])


class MCScorer:
    """The local multiple-choice task (benchmarks/baselines/mc_task.py) through lm-eval, cached per model tag."""

    def __init__(self, work: Path, tokenizer: Any, n_items: int) -> None:
        from amoeba_core.data import text_splits
        from amoeba_core.tasks import set_offline, task_manager
        from benchmarks.baselines.mc_task import TASK, write_task

        set_offline()
        self.task, self.tokenizer = TASK, tokenizer
        self.folder, self.n = write_task(work / "mc-task", text_splits()["test"], n_items)
        self.manager = task_manager([TASK], self.folder)
        self.cache = work / f"mc{self.n}"
        self.cache.mkdir(exist_ok=True)

    def describe(self) -> str:
        return (f"{self.task}: {self.n} items from the test split's documents, 4 continuations of 60 characters "
                "after a 240-character passage (1 right, 3 from other test documents at the same place); "
                "lm-eval multiple_choice log-likelihood acc through amoeba_core.tasks (physical subnet, adapters "
                "folded); 90% bootstrap over items; paired rows on the same items")

    def score(self, tag: str, model_fn: Any) -> dict[str, Any]:
        from amoeba_core.tasks import evaluate_model, pick

        path = self.cache / f"{tag}.json"
        if path.is_file():
            return json.loads(path.read_text())
        t = time.perf_counter()
        row = pick(evaluate_model(model_fn(), self.tokenizer, [self.task], include_path=self.folder, offline=True,
                                  manager=self.manager, shape_key=tag, batch_size=16), self.task, "acc")
        out = {"value": row.value, "per_item": list(row.per_item), "doc_ids": list(row.doc_ids), "n": row.n,
               "seconds": round(time.perf_counter() - t, 1)}
        path.write_text(json.dumps(out))
        print(f"mc {tag}: acc {row.value:.3f} ({out['seconds']} s)", flush=True)
        return out

    @staticmethod
    def entry(r: dict[str, Any]) -> dict[str, Any]:
        from amoeba_core.stats import mean_ci

        iv = mean_ci(r["per_item"])
        return {"value": round(r["value"], 4), "ci90": [round(iv.lo, 4), round(iv.hi, 4)], "n": r["n"]}

    @staticmethod
    def paired(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> dict[str, Any]:
        from amoeba_core.stats import paired_diff

        if a["doc_ids"] != b["doc_ids"]:
            raise ValueError(f"{names}: multiple-choice scores are not on the same items")
        d = paired_diff(a["per_item"], b["per_item"])
        return {"diff": round(d.diff.value, 4), "ci90": [round(d.diff.lo, 4), round(d.diff.hi, 4)],
                "verdict": d.verdict(False, names)}


def _paired_entry(sc: ShapeScore, ref: ShapeScore, names: tuple[str, str]) -> dict[str, Any]:
    d, t = compare(sc, ref, "ppl"), compare(sc, ref, "top1")
    return {"ppl": {"diff": round(d.diff.value, 4), "ci90": [round(d.diff.lo, 4), round(d.diff.hi, 4)],
                    "verdict": d.verdict(True, names)},
            "top1": {"diff": round(t.diff.value, 5), "ci90": [round(t.diff.lo, 5), round(t.diff.hi, 5)],
                     "verdict": t.verdict(False, names)}}


def _score_entry(label: str, c: dict[str, Any], sc: ShapeScore) -> dict[str, Any]:
    return {"shape": label, "layers": list(c["shape"].layers), "latency_ms": round(c["ms"], 4),
            "latency_source": c["source"], "test_ppl": round(sc.ppl, 4), "test_ppl_ci90": [sc.ppl_lo, sc.ppl_hi],
            "test_top1": round(sc.top1_acc, 5), "test_top1_ci90": [sc.top1_lo, sc.top1_hi]}


def after_finetuning(args: argparse.Namespace, loaded: LoadedModel, strategy: Strategy,
                     cands: dict[str, list[dict[str, Any]]], picked: dict[float, dict[str, tuple[dict[str, Any], ShapeScore]]],
                     lat: Any, work: Path, seq: int, n_val: int, n_test: int, mc: MCScorer | None = None) -> dict[str, Any]:
    """Every method's chosen shape after the same per-shape LoRA (``amoeba`` here is AmoebaLLM†), and
    AmoebaLLM after its one-for-all Stage 2 (``amoeba-ft``: the same choice by val perplexity, over the
    fine-tuned model's shapes within the budget), each peer paired against both on the test tokens."""
    import copy
    import dataclasses

    from amoeba_core.finetune import META, apply_adapters
    from amoeba_core.tasks import subnet_model
    from benchmarks.baselines import lora as bl_lora

    budget = bl_lora.LoraBudget(steps=2 if args.quick else args.lora_steps, seq_len=seq, rank=4 if args.quick else args.lora_rank,
                                lr=args.lora_lr)
    runs: dict[str, dict[str, Any]] = {}
    tuned: dict[tuple[str, str], ShapeScore] = {}
    mc_tuned: dict[tuple[str, str], dict[str, Any]] = {}

    def per_shape(method: str, c: dict[str, Any]) -> ShapeScore:
        key = (method, c["label"])
        if key not in tuned:
            base, strat, shape = bl_lora.target(loaded, c.get("strategy"), c["shape"], c.get("model"))
            name = f"lora-{method}-{c['label']}"
            model, runs[name] = bl_lora.train_per_shape(base, strat, shape, budget, work / name)
            ev = Evaluator(model, strat, split="test", seq_len=seq, max_windows=n_test, spread=True,
                           cache=work / f"test-{name}.jsonl")
            tuned[key] = ev.score(shape)
            if mc is not None:
                mc_tuned[key] = mc.score(name, lambda: subnet_model(model, strat, shape))
            print(f"per-shape LoRA {method} {c['label']}: test ppl {tuned[key].ppl:.2f} "
                  f"({runs[name]['train_seconds']} s of training)", flush=True)
            del model, ev
        return tuned[key]

    ft_evals: dict[str, Evaluator] = {}
    ft_space: list[dict[str, Any]] = []
    stage2: dict[str, Any] | None = None
    d = Path(args.adapters) if args.adapters else None
    if d is None and args.quick:  # the one-for-all code path on the tiny model: a 2-step Stage 2
        from amoeba_core.finetune import ADAPTERS, FinetuneConfig, finetune

        d = work / "stage2-quick"
        if not (d / ADAPTERS).is_file():
            finetune(dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)), strategy,
                     FinetuneConfig(steps=2, k=2, seq_len=seq, batch=1, rank=4, warmup=1, min_depth=2), d)
    if d is not None:
        meta = json.loads((d / META).read_text())
        min_d = meta["finetune"].get("min_depth") or 1
        ft_model = apply_adapters(dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)), strategy, d)
        for split, n in (("val", n_val), ("test", n_test)):
            ft_evals[split] = Evaluator(ft_model, strategy, split=split, seq_len=seq, max_windows=n, spread=True,
                                        cache=work / f"{split}-amoeba-ft-{ft_model.adapters}.jsonl")
        ft_space = [c for c in cands["amoeba"] if c["shape"].depth >= min_d]
        logs = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines() if x]
        cfg = meta["finetune"]
        stage2 = {"adapters": os.path.relpath(d, REPO), "steps": len(logs), "k": cfg["k"], "seq_len": cfg["seq_len"],
                  "batch": cfg["batch"], "rank": cfg["rank"], "experts": cfg["experts"], "top_k": cfg["top_k"],
                  "min_depth": min_d, "shapes_trained": f"{len(ft_space)} of the strategy grid (depth >= {min_d})",
                  "tokens": len(logs) * cfg["seq_len"] * cfg["batch"] * cfg.get("grad_accum", 1),
                  "train_seconds": round(sum(x["seconds"] for x in logs), 1)}
    out: dict[float, dict[str, Any]] = {}
    for b, chosen in picked.items():
        row: dict[str, Any] = {"methods": {}}
        lora = {m: (c, per_shape(m, c)) for m, (c, _) in chosen.items()} if budget.steps > 0 else {}
        ref_lora = lora.get("amoeba")
        ft: tuple[dict[str, Any], ShapeScore] | None = None
        ft_mc: dict[str, Any] | None = None
        if ft_evals:
            limit = b * lat(strategy.shape(loaded.geometry.n_layers, 1.0)).ms
            fits = [c for c in ft_space if c["ms"] <= limit]
            if fits:
                best = min(fits, key=lambda c: ft_evals["val"].score(c["shape"]).ppl)
                ft = (best, ft_evals["test"].score(best["shape"]))
                row["methods"]["amoeba-ft"] = _score_entry(best["label"], best, ft[1])
                if mc is not None:
                    ft_mc = mc.score(f"amoeba-ft-{ft_model.adapters}-{best['label']}",
                                     lambda: subnet_model(ft_model, strategy, best["shape"]))
                    row["methods"]["amoeba-ft"]["mc_acc"] = mc.entry(ft_mc)
                print(f"budget {b:.0%} amoeba after Stage 2 {best['label']}: test ppl {ft[1].ppl:.2f}", flush=True)
            else:
                row["methods"]["amoeba-ft"] = {"shape": None, "note": "no fine-tuned shape within the budget"}
        beats_ft, beats_lora = ft is not None, ref_lora is not None
        for m, (c, sc) in lora.items():
            entry = _score_entry(c["label"], c, sc)
            m_mc = mc_tuned.get((m, c["label"]))
            if m_mc is not None:
                entry["mc_acc"] = mc.entry(m_mc)
            if m != "amoeba":
                if ft is not None:
                    entry["minus_amoeba_ft"] = _paired_entry(sc, ft[1], (m, "amoeba-ft"))
                    beats_ft &= entry["minus_amoeba_ft"]["ppl"]["ci90"][0] > 0
                    if m_mc is not None and ft_mc is not None:
                        entry["minus_amoeba_ft"]["mc_acc"] = mc.paired(m_mc, ft_mc, (m, "amoeba-ft"))
                if ref_lora is not None:
                    entry["minus_amoeba_lora"] = _paired_entry(sc, ref_lora[1], (m, "amoeba"))
                    beats_lora &= entry["minus_amoeba_lora"]["ppl"]["ci90"][0] > 0
                    ref_mc = mc_tuned.get(("amoeba", ref_lora[0]["label"]))
                    if m_mc is not None and ref_mc is not None:
                        entry["minus_amoeba_lora"]["mc_acc"] = mc.paired(m_mc, ref_mc, (m, "amoeba"))
            row["methods"][m if m != "amoeba" else "amoeba-lora"] = entry
        if lora:  # true when every peer's per-shape-LoRA perplexity interval lies above AmoebaLLM's
            row["amoeba_finetuned_beats_all_peers"] = bool(beats_ft) if ft_evals else None
            row["amoeba_lora_beats_all_peers"] = bool(beats_lora)
        out[b] = row
    setup = {"per_shape_lora": {"steps": budget.steps, "seq_len": budget.seq_len, "batch": budget.batch, "rank": budget.rank,
                                "lr": budget.lr, "tokens_per_shape": budget.tokens, "recipe": "one plain LoRA on the shape "
                                "(amoeba_core.finetune, k=1, no SMoL, no distillation, no balancing)", "runs": runs},
             "stage2": stage2 or "not run (no --adapters)",
             "methods": "amoeba-lora = AmoebaLLM's Stage-1 shape with the same per-shape LoRA (the paper's AmoebaLLM†); "
                        "amoeba-ft = AmoebaLLM after its one-for-all Stage 2, shape re-chosen on val"}
    return {"budgets": out, "setup": setup}


def plot(result: dict[str, Any], path: Path) -> None:
    """Test perplexity (and, when scored, multiple-choice accuracy) against latency, one line per method
    over the budgets, 90% error bars: as pruned and, when run, after fine-tuning (per-shape LoRA for
    every method; AmoebaLLM's one-for-all Stage 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("as pruned (Stage 1)", [r["methods"] for r in result["budgets"]])]
    if any("after_finetuning" in r for r in result["budgets"]):
        panels.append(("after fine-tuning", [r.get("after_finetuning", {}).get("methods", {}) for r in result["budgets"]]))
    metrics = [("test_ppl", "test perplexity (lower is better), 90% CI", True)]
    if any("mc_acc" in m for _, rows in panels for r in rows for m in r.values() if isinstance(m, dict)):
        metrics.append(("mc_acc", "multiple-choice accuracy (higher is better), 90% CI", False))
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(7 * len(panels), 4.6 * len(metrics)), squeeze=False)
    for i, (key, ylabel, log_scale) in enumerate(metrics):
        for ax, (title, rows) in zip(axes[i], panels):
            names = [m for m in ("amoeba", "amoeba-ft", "amoeba-lora", *METHODS[1:]) if any(m in r for r in rows)]
            for method in names:
                pts = sorted((r[method] for r in rows if r.get(method, {}).get("shape") and
                              (key == "test_ppl" or "mc_acc" in r[method])), key=lambda p: p["latency_ms"])
                if not pts:
                    continue
                x = [p["latency_ms"] for p in pts]
                if key == "test_ppl":
                    y, lo, hi = [p["test_ppl"] for p in pts], [p["test_ppl_ci90"][0] for p in pts], [p["test_ppl_ci90"][1] for p in pts]
                else:
                    y, lo, hi = [p["mc_acc"]["value"] for p in pts], [p["mc_acc"]["ci90"][0] for p in pts], [p["mc_acc"]["ci90"][1] for p in pts]
                err = [[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]]
                label = {"amoeba-ft": "amoeba (one-for-all Stage 2)", "amoeba-lora": "amoeba† (per-shape LoRA)"}.get(method, method)
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=COLORS[method],
                            lw=2.5 if method.startswith("amoeba") else 1.2)
            ax.set_xlabel(f"decode latency, ms/token ({result['latency']['table']})")
            ax.set_ylabel(ylabel)
            if log_scale:
                ax.set_yscale("log")
            ax.set_title(title)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(f"{result['model']}: best shape per method at 80/65/50% of full latency")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
