"""Stage 2 ablation: test-split perplexity of 6 shapes under each fine-tuning recipe.

Rows: no fine-tuning; one shared LoRA (sandwich, labels only); SMoL; SMoL + in-place
distillation; SMoL + distillation + loss-magnitude balancing (the full recipe); and, for two
shapes, a LoRA fine-tuned on that shape alone for the same number of steps (the paper's †).
Every variant starts from the same base weights, sees the same training batches (``train``
split) and the same number of optimizer steps; the step count is derived from the wall-time
budget (``--minutes``) after timing one sandwich step, or fixed by ``--steps``, and is written
to the JSON.

Accuracy you can trust: every perplexity is scored on ``--eval-windows`` windows spread evenly
over the whole ``test`` split (data version 2: pydoc topics + standard-library docs), with the
per-window NLL sums kept, so each number carries a 90% bootstrap interval (``ci90``, resampling
documents) and each ablation step (shared LoRA vs none, SMoL vs shared LoRA, + distillation,
+ balancing, per-shape LoRA vs the full recipe) a *paired* interval on the same windows, with a
verdict ("not significant" when the interval contains 0). The mean over the six shapes gets
the same treatment (one bootstrap resample applies to every shape's windows).

    python benchmarks/stage2_ablation.py            # SmolLM2, about --minutes 40 on 2 cores
    python benchmarks/stage2_ablation.py --quick    # tiny random model, seconds (CI)
    python benchmarks/stage2_ablation.py --steps 1000 --seq-len 128 --rank 16   # the long run (hours:
        # about 7 runs x 1000 steps x the sandwich step's time); kill it and start the same command
        # again to resume: every run keeps its checkpoint (every 25 steps) in --work

Per-shape LoRA (the paper's †) is trained for the full, middle-2 and smallest shapes with the same
steps and sequence length as each one-for-all variant, so every shape it is compared at saw the
same training tokens; ``within_3pct_of_per_shape`` says, per shape, whether the full recipe's
perplexity is within 3% of it (the paper's goal).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks._profile_run

from amoeba_core.data import data_record, split_docs, spread_windows, text_splits, token_windows  # noqa: E402
from amoeba_core.evaluate import ShapeScore, compare  # noqa: E402
from amoeba_core.finetune import FinetuneConfig, finetune  # noqa: E402
from amoeba_core.model import LoadedModel, load_model  # noqa: E402
from amoeba_core.shape import SubnetShape  # noqa: E402
from amoeba_core.smol import adapted_subnet  # noqa: E402
from amoeba_core.stats import Interval, PairedDiff, bootstrap  # noqa: E402
from amoeba_core.strategy import LayerRanking, Strategy  # noqa: E402

from benchmarks._profile_run import loadavg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
log = logging.getLogger("stage2_ablation")


def weight_strategy(loaded: LoadedModel, widths: tuple[float, ...], calib_windows: int = 2) -> Strategy:
    """Fallback when no Stage-1 strategy file exists: a labelled heuristic, not a Stage-1 selection.

    Depth drops middle layers first (the first two and last two layers are kept longest);
    width ranks heads by ``|head output| * |o_proj columns|`` and channels by
    ``|activation| * |down_proj column|`` on ``calib_windows`` x 128 tokens of the calib split.
    """
    g = loaded.geometry
    n = g.n_layers
    order = sorted(range(2, n - 2), key=lambda i: abs(i - (n - 1) * 0.6))  # dropped first
    depth_layers = {d: tuple(sorted(set(range(n)) - set(order[: n - d]))) for d in range(max(2, n // 2), n + 1)}
    hd, hpg = g.head_dim, g.n_heads // g.n_kv_heads
    acts: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(loaded.model.model.layers):
        for tag, mod in (("o", layer.self_attn.o_proj), ("down", layer.mlp.down_proj)):
            def hook(_m: Any, args: Any, key: tuple[int, str] = (i, tag)) -> None:
                acts[key] = acts.get(key, 0) + args[0].detach().pow(2).sum((0, 1))
            hooks.append(mod.register_forward_pre_hook(hook))
    seq = min(128, g.max_position)
    calib = token_windows(loaded.tokenizer, text_splits()["calib"], seq, max_windows=calib_windows)
    try:
        with torch.no_grad():
            loaded.model(input_ids=calib)
    finally:
        for h in hooks:
            h.remove()
    ranks = []
    for i, layer in enumerate(loaded.model.model.layers):
        o = layer.self_attn.o_proj.weight.detach()
        oa = acts[(i, "o")].sqrt()
        hs = torch.stack([oa[h * hd : (h + 1) * hd].norm() * o[:, h * hd : (h + 1) * hd].norm() for h in range(g.n_heads)])
        gs = hs.view(g.n_kv_heads, hpg).sum(1)
        ch = acts[(i, "down")].sqrt() * layer.mlp.down_proj.weight.detach().norm(dim=0)
        ranks.append(LayerRanking(
            groups=tuple(int(i) for i in torch.argsort(gs, descending=True)),
            heads=tuple(tuple(int(i) for i in torch.argsort(hs.view(g.n_kv_heads, hpg)[k], descending=True)) for k in range(g.n_kv_heads)),
            channels=tuple(int(i) for i in torch.argsort(ch, descending=True)),
        ))
    return Strategy(model_fingerprint=loaded.fingerprint, model_source=loaded.source, geometry=g.to_dict(),
                    metric="heuristic-drop-middle", width_metric="activation-x-weight-norm", depth_layers=depth_layers,
                    rankings=tuple(ranks), widths=widths)


def eval_shapes(strategy: Strategy, min_depth: int, widths: tuple[float, ...]) -> dict[str, SubnetShape]:
    depths = [d for d in strategy.depths if d >= min_depth]
    full, small = strategy.shape(max(depths), max(widths)), strategy.shape(min(depths), min(widths))
    grid = sorted({strategy.shape(d, w) for d in depths for w in widths} - {full, small}, key=lambda s: (-s.depth, -s.width))
    mids = [grid[len(grid) * i // 4] for i in (1, 2, 3)]
    ws = sorted(widths)
    off_w = (ws[0] + ws[1]) / 2 if len(ws) > 1 else ws[0]
    off = strategy.shape(depths[len(depths) // 2], off_w)
    return {"full": full, "middle-1": mids[0], "middle-2": mids[1], "middle-3": mids[2], "smallest": small, "off-grid": off}


def score(model: torch.nn.Module, shape: SubnetShape, strategy: Strategy, windows: torch.Tensor, owner: list[int],
          batch: int = 4) -> ShapeScore:
    """Per-window NLL sums and right tokens of ``shape`` (adapters used if installed) -> score with ci90."""
    import torch.nn.functional as F

    model.eval()
    nll: list[float] = []
    right: list[int] = []
    t0 = time.perf_counter()
    with torch.no_grad(), adapted_subnet(model, shape, strategy) as m:
        for i in range(0, len(windows), batch):
            ids = windows[i : i + batch]
            logits = m(input_ids=ids).logits[:, :-1].float()
            tgt = ids[:, 1:]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
            nll += loss.view(tgt.shape).double().sum(1).tolist()
            right += (logits.argmax(-1) == tgt).sum(1).tolist()
    n_tok = [int(windows.shape[1] - 1)] * len(nll)
    return ShapeScore.from_units(shape.key, "test", nll, right, n_tok, time.perf_counter() - t0, owner)


def _mean_ppl_units(*variants: list[ShapeScore]) -> tuple[list[np.ndarray], int]:
    """One row per resampling unit: [tokens, NLL sum of shape 1..k of variant 1, ... of variant m]."""
    cols = [variants[0][0].units()[3]]
    for scores in variants:
        cols += [s.units()[1] for s in scores]
    rows = np.array(cols, dtype=float).T
    return [r for r in rows], len(variants[0])


def _mean_ppl(flat: np.ndarray, k: int, m: int) -> np.ndarray:
    rows = flat.reshape(-1, 1 + k * m)
    tok = rows[:, 0].sum()
    return np.exp(rows[:, 1:].sum(0) / tok).reshape(m, k).mean(1)


def mean_ppl_ci(scores: list[ShapeScore]) -> Interval:
    """Arithmetic mean of the shapes' perplexities, 90% bootstrap over the shared units."""
    units, k = _mean_ppl_units(scores)
    return bootstrap(units, lambda x: float(_mean_ppl(x, k, 1)[0]))


def mean_ppl_diff(a: list[ShapeScore], b: list[ShapeScore]) -> PairedDiff:
    """Paired 90% interval of mean-ppl(a) - mean-ppl(b): one resample of units for both."""
    units, k = _mean_ppl_units(a, b)
    d = bootstrap(units, lambda x: float(np.subtract(*_mean_ppl(x, k, 2))))
    va, vb = (float(v) for v in _mean_ppl(np.concatenate(units), k, 2))
    return PairedDiff(d, va, vb)


def _paired(d: PairedDiff, names: tuple[str, str]) -> dict[str, Any]:
    return {"a": names[0], "b": names[1], "a_ppl": round(d.a, 4), "b_ppl": round(d.b, 4),
            "diff": round(d.diff.value, 4), "ci90": [round(d.diff.lo, 4), round(d.diff.hi, 4)],
            "verdict": d.verdict(lower_is_better=True, names=names)}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def train(loaded: LoadedModel, strategy: Strategy, cfg: FinetuneConfig, d: Path) -> tuple[torch.nn.Module, Path]:
    """``finetune`` into ``d``, resuming from its checkpoint when a killed run left one there; a folder that
    already holds all ``cfg.steps`` steps is loaded as it is (its train log must cover them)."""
    from amoeba_core.finetune import CHECKPOINT, load_adapted, steps_done

    if (d / CHECKPOINT).is_file() and steps_done(d) >= cfg.steps:
        log.info("%s: %d steps already done, loading", d, steps_done(d))
        return load_adapted(loaded, strategy, d), d
    return finetune(loaded, strategy, cfg, d, resume=(d / CHECKPOINT).is_file()), d


def balancing_record(loaded: LoadedModel, strategy: Strategy, cfg: FinetuneConfig, batches: int = 4) -> dict[str, Any]:
    """Why balancing to the largest's loss hurts, measured: per-term gradient norms of fresh adapters.

    On ``batches`` training batches (the sandwich of steps 0..batches-1), the gradient of each term
    -- the largest shape's cross-entropy, each other shape's KL to the largest -- is taken alone; the
    step each balancing rule would take is then their weighted sum, clipped to ``max_grad_norm`` as
    :func:`amoeba_core.finetune.finetune` clips it. ``ce_step_norm`` is the part of that clipped step
    that comes from the largest shape's own loss.
    """
    import random

    from amoeba_core.finetune import _kl, _lm_loss, sandwich, shape_space, train_windows
    from amoeba_core.smol import install_smol

    model = loaded.model
    install_smol(model, cfg.smol_config(len(model.model.layers), tuple(strategy.widths)))
    params = [p for p in model.parameters() if p.requires_grad]
    shapes = shape_space(strategy, cfg)
    windows = train_windows(loaded.tokenizer, cfg.seq_len, cfg.data_seed)
    model.train()
    per_mode: dict[str, list[dict[str, float]]] = {"none": [], "largest": [], "others": []}
    losses: list[list[float]] = []
    for step in range(batches):
        picked = sandwich(shapes, cfg.k, random.Random(cfg.seed * 1_000_003 + step))
        ids = windows[step * cfg.batch:(step + 1) * cfg.batch]
        grads, vals, teacher = [], [], None
        for i, shape in enumerate(picked):
            with adapted_subnet(model, shape, strategy) as m:
                logits = m(input_ids=ids).logits
                loss = _lm_loss(logits, ids) if i == 0 else _kl(logits, teacher)
                teacher = logits.detach() if i == 0 else teacher
                g = torch.autograd.grad(loss, params, allow_unused=True)
            grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)]))
            vals.append(float(loss.detach()))
        losses.append(vals)
        others_mean = sum(vals[1:]) / len(vals[1:])
        for mode in per_mode:
            w = [1.0] + [1.0 if mode == "none" else (vals[0] if mode == "largest" else others_mean) / max(v, 1e-8) for v in vals[1:]]
            total = float(sum(wi * gi for wi, gi in zip(w, grads)).norm())
            clip = min(1.0, cfg.max_grad_norm / total)
            per_mode[mode].append({"weights_of_others": w[1:], "total_grad_norm": total, "clip_scale": clip,
                                   "ce_grad_norm": float(grads[0].norm()), "ce_step_norm": float(grads[0].norm()) * clip,
                                   "others_step_norm": float(sum(wi * gi for wi, gi in zip(w[1:], grads[1:])).norm()) * clip})
    model.eval()
    avg = {mode: {k: round(float(np.mean([r[k] for r in rs])), 4) for k in ("total_grad_norm", "clip_scale",
                                                                               "ce_grad_norm", "ce_step_norm", "others_step_norm")}
           | {"mean_weight_of_others": round(float(np.mean([w for r in rs for w in r["weights_of_others"]])), 3)}
           for mode, rs in per_mode.items()}
    shrink = avg["largest"]["ce_step_norm"] / avg["none"]["ce_step_norm"]
    return {
        "what": ("gradient norms of the adapters at initialisation, each loss term alone, on the first "
                 f"{batches} training batches (K={cfg.k}, {cfg.seq_len} tokens, clip {cfg.max_grad_norm}); "
                 "'others' uses this batch's mean of the distilled losses as its reference (the run uses a running mean)"),
        "raw_losses": {"largest_ce": round(float(np.mean([v[0] for v in losses])), 4),
                       "others_kl": round(float(np.mean([x for v in losses for x in v[1:]])), 4)},
        "modes": avg,
        "finding": (f"The paper's reference is the largest subnet's loss, which with in-place distillation is a cross-"
                    f"entropy ({np.mean([v[0] for v in losses]):.2f} here) while the others are KL divergences to it "
                    f"({np.mean([x for v in losses for x in v[1:]]):.2f}): balancing to it multiplies the distillation terms "
                    f"by {avg['largest']['mean_weight_of_others']:.1f}x on average, and under the global gradient-norm clip the "
                    f"largest shape's own step shrinks to {shrink:.2f}x of its unbalanced size. Balancing the distilled "
                    "terms among themselves ('others') keeps their total scale and the largest's step "
                    f"({avg['others']['ce_step_norm'] / avg['none']['ce_step_norm']:.2f}x)."),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--strategy", default=str(RESULTS / "smollm2_strategy.yaml"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps per variant (0: from --minutes)")
    ap.add_argument("--eval-windows", type=int, default=16, help="test windows, spread over the split")
    ap.add_argument("--eval-len", type=int, default=128, help="tokens per test window")
    ap.add_argument("--seq-len", type=int, default=64, help="training tokens per sequence")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (SMoL: per expert)")
    ap.add_argument("--work", default=None,
                    help="folder of the runs' checkpoints (default runs/stage2-ablation[-quick]): a killed run "
                         "started again with the same flags resumes every variant where it stopped")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    t_begin = time.perf_counter()
    widths = (1.0, 0.875, 0.75)
    if args.quick:
        loaded = load_model("tiny")
        strategy, strategy_src = weight_strategy(loaded, widths), "heuristic (quick)"
        base = FinetuneConfig(steps=4, k=3, seq_len=32, batch=2, lr=5e-3, warmup=1, rank=4, experts=4, top_k=2, min_depth=2)
        n_eval, eval_len = 4, 32
    else:
        loaded = load_model("smollm2-135m")
        sp = Path(args.strategy)
        if sp.is_file():
            strategy = Strategy.load(sp, expect_fingerprint=loaded.fingerprint)
            widths = tuple(w for w in strategy.widths if w >= 0.75) or (1.0,)
            strategy_src = os.path.relpath(sp, RESULTS.parent.parent)  # no absolute path of this machine
        else:
            strategy, strategy_src = weight_strategy(loaded, widths), "heuristic fallback (no Stage-1 strategy file): drop-middle depth, activation x weight-norm width, 2x128 calib tokens"
        base = FinetuneConfig(steps=1, k=3, seq_len=args.seq_len, batch=1, lr=1e-3, warmup=1, rank=args.rank, experts=4,
                              top_k=2, min_depth=24)
        n_eval, eval_len = args.eval_windows, args.eval_len
    base = replace(base, checkpoint_every=25)
    work = Path(args.work or REPO / "runs" / ("stage2-ablation-quick" if args.quick else "stage2-ablation"))
    shapes = eval_shapes(strategy, base.min_depth or 1, widths)
    grid_space = [s for s in strategy.shapes(list(widths)) if s.depth >= (base.min_depth or 1)]
    test, owner = spread_windows(loaded.tokenizer, split_docs("test"), eval_len, n_eval)
    pristine = copy.deepcopy(loaded.model)
    fresh = lambda: LoadedModel(copy.deepcopy(pristine), loaded.tokenizer, loaded.geometry, loaded.fingerprint, loaded.source)  # noqa: E731

    def train_space(cfg: FinetuneConfig) -> FinetuneConfig:
        return replace(cfg, train_shapes=cfg.train_shapes or [s.grid_key for s in grid_space])

    rows: dict[str, dict[str, float]] = {}
    scored: dict[str, dict[str, ShapeScore]] = {}

    def perplexities(name: str, model: torch.nn.Module, which: dict[str, SubnetShape]) -> None:
        scored[name] = {n: score(model, s, strategy, test, owner) for n, s in which.items()}
        rows[name] = {n: sc.ppl for n, sc in scored[name].items()}

    t0 = time.perf_counter()
    perplexities("no fine-tuning", loaded.model, shapes)
    eval_s = (time.perf_counter() - t0) / len(shapes)
    log.info("no fine-tuning: %s (%.1f s per shape)", rows["no fine-tuning"], eval_s)

    full_name = "SMoL + distillation + balancing"
    paper_name = "SMoL + distillation + balancing to the largest's loss"
    variants = {
        "one shared LoRA": replace(base, smol=False, distill=False, balance=False),
        "SMoL": replace(base, smol=True, distill=False, balance=False),
        "SMoL + distillation": replace(base, smol=True, distill=True, balance=False),
        full_name: replace(base, smol=True, distill=True, balance=True, balance_to="others"),
        paper_name: replace(base, smol=True, distill=True, balance=True, balance_to="largest"),
    }
    chain = ["no fine-tuning", "one shared LoRA", "SMoL", "SMoL + distillation", full_name]  # each vs the one before
    single = {n: shapes[n] for n in ("full", "middle-2", "smallest") if n in shapes}
    # time one sandwich step to size the runs
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        finetune(fresh(), strategy, train_space(replace(base, steps=1)), d)
        step_s = time.perf_counter() - t0
    if args.quick:
        steps = base.steps
    elif args.steps > 0:
        steps = args.steps
    else:
        left = args.minutes * 60 - (time.perf_counter() - t_begin) - eval_s * (6 * len(variants) + 2) - 60
        per_step = step_s * (len(variants) + len(single) / base.k)
        steps = max(1, int(left / per_step))
    warmup = base.warmup if args.quick else max(1, steps // 50)
    log.info("one sandwich step %.1f s -> %d steps per variant (warm-up %d)", step_s, steps, warmup)
    balancing = balancing_record(fresh(), strategy, train_space(replace(base, warmup=warmup)), batches=1 if args.quick else 4)
    runs: dict[str, Any] = {}
    scored["per-shape LoRA (†)"] = {}
    out = Path(args.out) if args.out else RESULTS / ("stage2_ablation_quick.json" if args.quick else "stage2_ablation.json")

    def record(d: Path, cfg: FinetuneConfig, wall: float) -> dict[str, Any]:
        logs = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        return {"steps": len(logs), "tokens": len(logs) * cfg.seq_len * cfg.batch * cfg.grad_accum,
                "tokens_per_shape_step": cfg.seq_len * cfg.batch * cfg.grad_accum,
                "train_seconds": round(sum(x["seconds"] for x in logs), 1),  # over every session the run took
                "wall_seconds_this_invocation": round(wall, 1), "last_losses": logs[-1]["losses"],
                "mean_losses_last_100_steps": {k: round(float(np.mean([x["losses"][k] for x in logs[-100:] if k in x["losses"]])), 4)
                                               for k in ("largest", "smallest")}}

    # the runs the paper's claims rest on come first, so a session that ends early leaves them done
    jobs: list[tuple[str, FinetuneConfig, str | None]] = [(full_name, variants[full_name], None)]
    jobs += [(f"per-shape LoRA {n}", replace(base, smol=False, distill=False, balance=False, k=1,
                                             train_shapes=[s.grid_key]), n) for n, s in single.items()]
    jobs += [(n, variants[n], None) for n in ("SMoL + distillation", "one shared LoRA", "SMoL", paper_name)]
    for name, cfg, one in jobs:
        cfg = replace(cfg, steps=steps, warmup=warmup)
        cfg = cfg if one else train_space(cfg)
        t0 = time.perf_counter()
        model, d = train(fresh(), strategy, cfg, work / (f"per-shape-{one}" if one else slug(name)))
        runs[name] = record(d, cfg, time.perf_counter() - t0)
        if one:
            scored["per-shape LoRA (†)"][one] = score(model, single[one], strategy, test, owner)
            rows["per-shape LoRA (†)"] = {n: sc.ppl for n, sc in scored["per-shape LoRA (†)"].items()}
        else:
            perplexities(name, model, shapes)
        log.info("%s: %s (%d steps, %.0f s of training)", name, rows.get(name, rows.get("per-shape LoRA (†)")),
                 runs[name]["steps"], runs[name]["train_seconds"])
        del model
        write_result(out, build_result(args, loaded, strategy_src, test, owner, eval_len, shapes, base, steps, warmup,
                                       step_s, rows, scored, runs, chain, full_name, paper_name, single, balancing,
                                       complete=len(runs) == len(jobs), wall=time.perf_counter() - t_begin))
    result = json.loads(out.read_text())
    names = list(shapes)

    def mean(r: dict[str, float]) -> float:
        return sum(r.values()) / len(r)

    print(f"{'variant':34s}" + "".join(f"{n:>11s}" for n in names) + f"{'mean':>10s}")
    for k, r in rows.items():
        print(f"{k:34s}" + "".join(f"{r[n]:11.2f}" if n in r else f"{'-':>11s}" for n in names)
              + (f"{mean(r):10.2f}" if len(r) == len(names) else ""))
    print("steps per run:", {k: v["steps"] for k, v in runs.items()})
    for p in result["paired"]:
        if p["shape"] == "mean of 6" or p["b"].startswith("per-shape"):
            print(f"{p['a']} - {p['b']} ({p['shape']}): {p['diff']:+.2f} ppl, 90% [{p['ci90'][0]:+.2f}, "
                  f"{p['ci90'][1]:+.2f}]: {p['verdict']}")
    print(result["note"])
    print(f"wrote {out} ({result['wall_seconds']} s)")


def write_result(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


def build_result(args: argparse.Namespace, loaded: LoadedModel, strategy_src: str, test: torch.Tensor, owner: list[int],
                 eval_len: int, shapes: dict[str, SubnetShape], base: FinetuneConfig, steps: int, warmup: int,
                 step_s: float, rows: dict[str, dict[str, float]], scored: dict[str, dict[str, ShapeScore]],
                 runs: dict[str, Any], chain: list[str], full_name: str, paper_name: str,
                 single: dict[str, SubnetShape], balancing: dict[str, Any] | None, complete: bool,
                 wall: float) -> dict[str, Any]:
    """The JSON of every run finished so far (``complete`` false while some are still to run)."""
    names6 = list(shapes)
    done = [k for k in rows if k != "per-shape LoRA (†)" and len(scored[k]) == len(names6)]
    ci90 = {k: {n: [round(sc.ppl_lo, 4), round(sc.ppl_hi, 4)] for n, sc in v.items()} for k, v in scored.items() if v}
    mean_ci = {k: mean_ppl_ci([scored[k][n] for n in names6]) for k in done}
    pairs = [(a, b) for a, b in zip(chain[1:], chain[:-1])]
    pairs.append((paper_name, "SMoL + distillation"))
    paired: list[dict[str, Any]] = []
    for a, b in pairs:
        if a not in done or b not in done:
            continue
        paired.append({"shape": "mean of 6", **_paired(mean_ppl_diff([scored[a][n] for n in names6],
                                                                     [scored[b][n] for n in names6]), (a, b))})
        for n in names6:
            paired.append({"shape": n, **_paired(compare(scored[a][n], scored[b][n]), (a, b))})
    gap: dict[str, float] = {}
    if full_name in done:
        for n, sc in scored["per-shape LoRA (†)"].items():
            paired.append({"shape": n, **_paired(compare(scored[full_name][n], sc), (full_name, "per-shape LoRA (†)"))})
            gap[n] = rows[full_name][n] / sc.ppl - 1

    def mean(r: dict[str, float]) -> float:
        return sum(r.values()) / len(r)

    best = min(done, key=lambda k: mean(rows[k]))
    note = (f"{'' if complete else 'PARTIAL (runs still to come: see not_run). '}lowest mean ppl: {best!r}; "
            "full recipe vs per-shape LoRA: " + ", ".join(f"{n} {100 * g:+.1f}%" for n, g in gap.items()))
    if complete:
        note += (". Paper ordering (full recipe best on average, within 3% of per-shape) "
                 + ("holds." if best == full_name and all(g <= 0.03 for g in gap.values()) else "does NOT hold in this run."))
    note += " Paired 90% intervals, mean of 6 shapes: " + "; ".join(
        f"{p['a']} vs {p['b']}: {p['diff']:+.2f} [{p['ci90'][0]:+.2f}, {p['ci90'][1]:+.2f}] ({p['verdict']})"
        for p in paired if p["shape"] == "mean of 6") + "."
    all_runs = [full_name, *(f"per-shape LoRA {n}" for n in single), "SMoL + distillation", "one shared LoRA", "SMoL",
                paper_name]
    return {
        "benchmark": "stage2_ablation",
        "quick": args.quick,
        "command": "python benchmarks/stage2_ablation.py" + ("" if args.quick else
                   f" --steps {args.steps} --seq-len {args.seq_len} --rank {args.rank} --eval-windows {args.eval_windows}"),
        "complete": complete,
        "not_run": [r for r in all_runs if r not in runs],
        "where": f"CPU ({platform.machine()}, {os.cpu_count()} logical cores, torch threads {args.threads})",
        "loadavg_at_write": loadavg(),
        "model": loaded.source,
        "strategy": strategy_src,
        "metric": (f"test-split perplexity, {len(test)} windows x {eval_len} tokens spread over the split "
                   f"({len(set(owner))} documents; same tokens for every row)"),
        "data": data_record(eval_windows=len(test), eval_len=eval_len),
        "interval": ("90% bootstrap (amoeba_core.stats): resampling documents (>= 8) or windows; paired rows "
                     "resample the same units for both sides; 'not significant' when the interval contains 0"),
        "shapes": {n: s.key for n, s in shapes.items()},
        "config": asdict(base) | {"steps": steps, "warmup": warmup},
        "sandwich_step_seconds": round(step_s, 1),
        "balancing": balancing,
        "perplexity": rows,
        "ci90": ci90,
        "mean_perplexity": {k: mean(rows[k]) for k in done},
        "mean_perplexity_ci90": {k: [round(v.lo, 4), round(v.hi, 4)] for k, v in mean_ci.items()},
        "paired": paired,
        "vs_per_shape_rel": {n: round(g, 4) for n, g in gap.items()},
        "within_3pct_of_per_shape": {n: g <= 0.03 for n, g in gap.items()},
        "runs": runs,
        "note": note,
        "wall_seconds": round(wall, 1),
    }


if __name__ == "__main__":
    main()
