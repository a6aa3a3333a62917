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
    timing: dict[str, float] = {}

    def perplexities(name: str, model: torch.nn.Module, which: dict[str, SubnetShape]) -> None:
        scored[name] = {n: score(model, s, strategy, test, owner) for n, s in which.items()}
        rows[name] = {n: sc.ppl for n, sc in scored[name].items()}

    t0 = time.perf_counter()
    perplexities("no fine-tuning", loaded.model, shapes)
    eval_s = (time.perf_counter() - t0) / len(shapes)
    log.info("no fine-tuning: %s (%.1f s per shape)", rows["no fine-tuning"], eval_s)

    variants = {
        "one shared LoRA": replace(base, smol=False, distill=False, balance=False),
        "SMoL": replace(base, smol=True, distill=False, balance=False),
        "SMoL + distillation": replace(base, smol=True, distill=True, balance=False),
        "SMoL + distillation + balancing": replace(base, smol=True, distill=True, balance=True),
    }
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
    log.info("one sandwich step %.1f s -> %d steps per variant", step_s, steps)
    runs: dict[str, Any] = {}
    for name, cfg in variants.items():
        cfg = train_space(replace(cfg, steps=steps))
        t0 = time.perf_counter()
        model, d = train(fresh(), strategy, cfg, work / slug(name))
        timing[name] = time.perf_counter() - t0
        logs = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        perplexities(name, model, shapes)
        runs[name] = {"steps": len(logs), "tokens_per_shape_step": cfg.seq_len * cfg.batch,
                      "train_seconds": round(timing[name], 1), "last_losses": logs[-1]["losses"]}
        log.info("%s: %s (%d steps, %.0f s)", name, rows[name], len(logs), timing[name])
        del model
    scored["per-shape LoRA (†)"] = {}
    for n, s in single.items():
        cfg = replace(base, smol=False, distill=False, balance=False, k=1, train_shapes=[s.grid_key], steps=steps)
        t0 = time.perf_counter()
        model, _ = train(fresh(), strategy, cfg, work / f"per-shape-{n}")
        runs[f"per-shape LoRA {n}"] = {"steps": steps, "tokens": steps * cfg.seq_len * cfg.batch,
                                       "train_seconds": round(time.perf_counter() - t0, 1)}
        scored["per-shape LoRA (†)"][n] = score(model, s, strategy, test, owner)
        del model
    per_shape = {n: sc.ppl for n, sc in scored["per-shape LoRA (†)"].items()}
    rows["per-shape LoRA (†)"] = per_shape

    names6 = list(shapes)
    order = ["no fine-tuning", *variants]
    ci90 = {k: {n: [round(sc.ppl_lo, 4), round(sc.ppl_hi, 4)] for n, sc in v.items()} for k, v in scored.items()}
    mean_ci = {k: mean_ppl_ci([scored[k][n] for n in names6]) for k in order}
    paired: list[dict[str, Any]] = []
    for a, b in zip(order[1:], order[:-1]):  # each ablation step against the row before it
        paired.append({"shape": "mean of 6", **_paired(mean_ppl_diff([scored[a][n] for n in names6],
                                                                     [scored[b][n] for n in names6]), (a, b))})
        for n in names6:
            paired.append({"shape": n, **_paired(compare(scored[a][n], scored[b][n]), (a, b))})
    for n in single:
        paired.append({"shape": n, **_paired(compare(scored["SMoL + distillation + balancing"][n],
                                                     scored["per-shape LoRA (†)"][n]),
                                             ("SMoL + distillation + balancing", "per-shape LoRA (†)"))})

    def mean(r: dict[str, float]) -> float:
        return sum(r.values()) / len(r)

    full_name = "SMoL + distillation + balancing"
    best = min((k for k in rows if k != "per-shape LoRA (†)"), key=lambda k: mean(rows[k]))
    gap = {n: rows[full_name][n] / v - 1 for n, v in per_shape.items()}
    within_3pct = {n: g <= 0.03 for n, g in gap.items()}
    note = (f"lowest mean ppl: {best!r}; full recipe vs per-shape LoRA: "
            + ", ".join(f"{n} {100 * g:+.1f}%" for n, g in gap.items())
            + ". Paper ordering (full recipe best on average, within 3% of per-shape) "
            + ("holds." if best == full_name and all(g <= 0.03 for g in gap.values()) else "does NOT hold in this run."))
    note += " Paired 90% intervals, mean of 6 shapes: " + "; ".join(
        f"{p['a']} vs {p['b']}: {p['diff']:+.2f} [{p['ci90'][0]:+.2f}, {p['ci90'][1]:+.2f}] ({p['verdict']})"
        for p in paired if p["shape"] == "mean of 6") + "."
    result = {
        "benchmark": "stage2_ablation",
        "quick": args.quick,
        "where": f"CPU ({platform.machine()}, {os.cpu_count()} logical cores, torch threads {args.threads})",
        "loadavg_at_end": loadavg(),
        "model": loaded.source,
        "strategy": strategy_src,
        "metric": (f"test-split perplexity, {len(test)} windows x {eval_len} tokens spread over the split "
                   f"({len(set(owner))} documents; same tokens for every row)"),
        "data": data_record(eval_windows=len(test), eval_len=eval_len),
        "interval": ("90% bootstrap (amoeba_core.stats): resampling documents (>= 8) or windows; paired rows "
                     "resample the same units for both sides; 'not significant' when the interval contains 0"),
        "shapes": {n: s.key for n, s in shapes.items()},
        "config": asdict(base) | {"steps": steps},
        "sandwich_step_seconds": round(step_s, 1),
        "perplexity": rows,
        "ci90": ci90,
        "mean_perplexity": {k: mean(v) for k, v in rows.items() if k != "per-shape LoRA (†)"},
        "mean_perplexity_ci90": {k: [round(v.lo, 4), round(v.hi, 4)] for k, v in mean_ci.items()},
        "paired": paired,
        "vs_per_shape_rel": {n: round(g, 4) for n, g in gap.items()},
        "within_3pct_of_per_shape": within_3pct,
        "runs": runs,
        "note": note,
        "wall_seconds": round(time.perf_counter() - t_begin, 1),
    }
    out = Path(args.out) if args.out else RESULTS / ("stage2_ablation_quick.json" if args.quick else "stage2_ablation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    names = list(shapes)
    print(f"{'variant':34s}" + "".join(f"{n:>11s}" for n in names) + f"{'mean':>10s}")
    for k, r in rows.items():
        print(f"{k:34s}" + "".join(f"{r[n]:11.2f}" if n in r else f"{'-':>11s}" for n in names)
              + (f"{mean(r):10.2f}" if len(r) == len(names) else ""))
    print("steps per variant:", {k: v["steps"] for k, v in runs.items()})
    for p in paired:
        if p["shape"] == "mean of 6" or p["b"].startswith("per-shape"):
            print(f"{p['a']} - {p['b']} ({p['shape']}): {p['diff']:+.2f} ppl, 90% [{p['ci90'][0]:+.2f}, "
                  f"{p['ci90'][1]:+.2f}]: {p['verdict']}")
    print(note)
    print(f"wrote {out} ({result['wall_seconds']} s)")


if __name__ == "__main__":
    main()
