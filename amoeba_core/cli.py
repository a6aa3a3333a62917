"""`amoeba select | eval | export` (Stage 1; thin wrappers, heavy imports inside)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from amoeba_core.errors import AmoebaError


def _console(quiet: bool = False):  # noqa: ANN202 - rich Console
    from rich.console import Console

    return Console(quiet=quiet)


def _threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


_DEVICE_HELP = "auto (the first accelerator present), cpu, cuda, cuda:N or mps."
_DTYPE_HELP = "float32 | bfloat16 | float16 (default: bfloat16 on CUDA with bf16, float16 on MPS, float32 on CPU)."


def _placement(device: str, dtype: Optional[str]):  # noqa: ANN202 - (torch.device, torch.dtype)
    """The validated ``--device``/``--dtype`` (an absent device is a one-line error, before anything loads)."""
    from amoeba_core.device import place

    return place(device, dtype)


def _plan(console, model: str, where, *, batch: int, seq_len: int) -> None:  # noqa: ANN001
    """Print the computed memory plan of an inference run of ``model``; refuse when it does not fit."""
    from amoeba_core.geometry import ModelGeometry
    from amoeba_core.memory import plan_memory

    try:
        geometry = ModelGeometry.resolve(model)
    except AmoebaError:
        return  # load_model names what is wrong with the model
    plan = plan_memory(geometry, where[1], batch=batch, seq_len=seq_len, device=where[0]).check()
    console.print(plan.fmt(), highlight=False, soft_wrap=True)


def _to(loaded, where):  # noqa: ANN001, ANN202
    """Move the loaded model to ``(device, dtype)``; it is read in float32, so its fingerprint names the
    stored weights whatever precision it runs in."""
    loaded.model.to(device=where[0], dtype=where[1])
    return loaded


def select(
    model: str = typer.Option("smollm2-135m", help="smollm2-135m, tiny, a .gguf file or an HF folder."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, help=_DTYPE_HELP),
    min_depth: int = typer.Option(..., help="Smallest depth the strategy must offer."),
    widths: str = typer.Option("1,0.875,0.75,0.625", help="Comma-separated width ratios in (0, 1]."),
    out: Path = typer.Option(..., help="Strategy YAML to write."),
    calib_seq_len: int = typer.Option(256, help="Tokens per calibration window."),
    calib_windows: int = typer.Option(4, help="Calibration windows for the depth DP metric, spread evenly over the "
                                              "calibration split (4 x 256 tokens keep select under 10 minutes; "
                                              "benchmarks/stage1.py compares budgets up to 16 on four held-out "
                                              "texts; with --depth-metric kl, 16 was never worse than ShortGPT on any)."),
    depth_metric: str = typer.Option("ppl", help="What the depth DP minimises on the calibration windows: ppl "
                                                 "(perplexity) or kl (KL divergence from the full model)."),
    calib_balance: bool = typer.Option(False, "--calib-balance/--no-calib-balance",
                                       help="Take an equal share of the calibration windows from each text source "
                                            "(pydoc topics, standard-library docs; at least one each) instead of "
                                            "spreading them over the split (about 31%/69%)."),
    refine_depths: str = typer.Option("", help="Depths whose DP layer set is then improved by swapping one removed "
                                               "layer for one kept one while that helps (comma-separated, e.g. "
                                               "27,24,21,18,15; empty: none). On SmolLM2 with --calib-windows 16 "
                                               "--calib-balance it beat ShortGPT at every depth on both test "
                                               "texts (benchmarks/results/stage1_confirm.json)."),
    confirm_windows: int = typer.Option(64, help="Source-balanced calibration windows that judge a swap: it is taken "
                                                 "only when its paired 90% interval there lies below 0."),
    stats_windows: int = typer.Option(4, help="Calibration windows for width statistics."),
    val_windows: int = typer.Option(2, help="Validation windows for choosing the width metric."),
    threads: int = typer.Option(0, help="torch threads (0: default)."),
) -> None:
    """Stage 1: DP depth selection + importance width ranking -> strategy YAML (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from amoeba_core.depth import check_min_depth
    from amoeba_core.model import load_model
    from amoeba_core.select import (
        SWAP_RULE,
        check_calib_windows,
        check_depth_metric,
        check_refine_depths,
        select_strategy,
    )
    from amoeba_core.shape import parse_ints, parse_widths

    w = parse_widths(widths)
    check_depth_metric(depth_metric)
    check_calib_windows(calib_windows, calib_balance)
    refine = parse_ints(refine_depths, "--refine-depths") if refine_depths.strip() else ()
    if refine and confirm_windows < 1:
        raise AmoebaError(f"--confirm-windows must be >= 1, got {confirm_windows}")
    if out.suffix not in (".yaml", ".yml"):
        raise AmoebaError(f"--out must be a .yaml file, got {out}")
    if out.exists() and out.is_dir():
        raise AmoebaError(f"--out {out} is a folder")
    from amoeba_core.distributed import init_distributed, local_device

    proc_rank, _ = init_distributed()  # under torchrun the ranks share the DP's candidates; rank 0 writes
    where = _placement(local_device(device), dtype)
    _threads(threads)
    console = _console(quiet=proc_rank != 0)
    _plan(console, model, where, batch=4, seq_len=calib_seq_len)
    t0 = time.perf_counter()
    loaded = _to(load_model(model), where)
    check_min_depth(loaded.geometry.n_layers, min_depth)
    check_refine_depths(loaded.geometry.n_layers, min_depth, refine)
    console.print(f"loaded {loaded.source} ({loaded.fingerprint}) in {time.perf_counter() - t0:.1f} s on {where[0]} "
                  f"({str(where[1]).removeprefix('torch.')})", highlight=False)
    cache_dir = out.parent / f".{out.stem}.cache-{loaded.fingerprint}"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        strategy = select_strategy(loaded, min_depth, w, cache_dir=cache_dir, calib_seq_len=calib_seq_len,
                                   calib_windows=calib_windows, stats_windows=stats_windows,
                                   val_windows=val_windows, progress=progress, depth_metric=depth_metric,
                                   calib_balance=calib_balance, refine_depths=refine,
                                   confirm_windows=confirm_windows)
    total = time.perf_counter() - t0
    from amoeba_core.data import data_record

    swaps_asked: dict[str, object] = {}
    if refine:
        swaps_asked = {"refine_depths": list(refine), "swap_rule": SWAP_RULE, "confirm_windows": confirm_windows}

    strategy = strategy.with_(stats={**strategy.stats, "wall_seconds_with_load": round(total, 2)},
                              data=data_record(calib_seq_len=calib_seq_len, calib_windows=calib_windows,
                                               depth_metric=depth_metric,
                                               stats_windows=stats_windows, val_windows=val_windows,
                                               window_choice="balanced" if calib_balance else "spread",
                                               **swaps_asked))
    if proc_rank == 0:
        strategy.save(out)
    st = strategy.stats
    console.print(f"depth DP: {st['dp_evaluations']} evaluations ({st['dp_evaluations_from_cache']} from cache) "
                  f"in {st['dp_seconds']:.1f} s on {st['dp_calib_tokens']} calibration tokens", highlight=False)
    console.print(f"width metric: {strategy.width_metric} (val ppl per metric: {json.dumps(st['width_metric_val_ppl'])})",
                  highlight=False)
    for d in strategy.depths:
        if d < loaded.geometry.n_layers:
            dropped = sorted(set(range(loaded.geometry.n_layers)) - set(strategy.depth_layers[d]))
            swaps = st.get("swap_refinement", {}).get(str(d))
            note = ""
            if swaps is not None:
                note = (f"  (swaps: DP's {swaps['dp_removed']} -> {swaps['removed']}, calibration "
                        f"{swaps['dp_calib']} -> {swaps['calib']}" + (", one refused" if "refused" in swaps else "")
                        + ")")
            console.print(f"  d{d}: drops {dropped}{note}", highlight=False)
    console.print(f"wrote {out}; total time {total:.1f} s ({total / 60:.1f} min)", highlight=False)


def _load_for(strategy_path: Path, model: Optional[str], adapters: Optional[Path] = None,  # noqa: ANN202
              where=None, seq_len: int = 256) -> tuple:  # noqa: ANN001
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy

    strategy = Strategy.load(strategy_path)
    if where is not None:
        _plan(_console(), model or strategy.model_source, where, batch=4, seq_len=seq_len)
    loaded = load_model(model or strategy.model_source)
    if loaded.fingerprint != strategy.model_fingerprint:
        raise AmoebaError(f"strategy {strategy_path} was made for model {strategy.model_fingerprint} "
                          f"({strategy.model_source}), but the loaded model is {loaded.fingerprint}")
    if adapters is not None:
        from amoeba_core.finetune import apply_adapters

        loaded = apply_adapters(loaded, strategy, adapters)
    if where is not None:
        loaded = _to(loaded, where)
    return loaded, strategy


def eval(  # noqa: A001 - the command is called eval
    strategy: Path = typer.Option(..., help="Strategy YAML from `amoeba select`."),
    shape: list[str] = typer.Option(..., "--shape", help="Shape(s) like d24-w0.75 (repeatable)."),
    split: str = typer.Option("test", help="calib | val | test | train, or one source's part: test-topics, "
                                           "test-stdlib, ..."),
    seq_len: int = typer.Option(256, help="Tokens per window (stride = seq_len)."),
    windows: int = typer.Option(128, help="Windows to score (0: every window of the split)."),
    spread: bool = typer.Option(True, help="Spread the windows evenly over the whole split (--no-spread: its "
                                           "first windows)."),
    task: Optional[str] = typer.Option(None, help="lm-eval-harness task(s), comma-separated (e.g. "
                                                  "mmlu,hellaswag,arc_easy) instead of perplexity."),
    limit: Optional[int] = typer.Option(None, help="--task: items per task (default: all)."),
    include_path: Optional[Path] = typer.Option(None, help="--task: folder of local lm-eval task YAML files."),
    num_fewshot: Optional[int] = typer.Option(None, help="--task: few-shot examples (default: the task's)."),
    offline: bool = typer.Option(False, help="--task: never touch the network (HF_DATASETS_OFFLINE, HF_HUB_OFFLINE)."),
    out: Optional[Path] = typer.Option(None, help="Also write the results as JSON here."),
    model: Optional[str] = typer.Option(None, help="Model (default: the strategy's source)."),
    adapters: Optional[Path] = typer.Option(None, help="Stage 2 output folder (`amoeba finetune --out`)."),
    threads: int = typer.Option(0, help="torch threads (0: default)."),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, help=_DTYPE_HELP),
) -> None:
    """Perplexity and next-token top-1 accuracy of shapes (90% intervals, cached per shape), or
    lm-eval-harness task accuracy with --task; with several shapes, paired differences to the first."""
    from amoeba_core.data import check_split
    from amoeba_core.strategy import Strategy

    where = _placement(device, dtype)
    manager = None
    if task is not None:
        from amoeba_core.tasks import parse_tasks, set_offline, task_manager

        tasks = parse_tasks(task)
        if limit is not None and limit < 1:
            raise AmoebaError(f"--limit must be >= 1, got {limit}")
        if offline:
            set_offline()
    else:
        check_split(split)
    if windows < 0:
        raise AmoebaError(f"--windows must be >= 0, got {windows}")
    if out is not None and out.exists() and out.is_dir():
        raise AmoebaError(f"--out {out} is a folder")
    strat = Strategy.load(strategy)
    shapes = [strat.resolve(s) for s in shape]  # bad shapes fail before the model loads
    if task is not None:
        manager = task_manager(tasks, include_path)  # unknown tasks fail before the model loads too
    _threads(threads)
    loaded, strat = _load_for(strategy, model, adapters, where, seq_len)
    console = _console()
    if task is not None:
        result = _eval_tasks(console, loaded, strat, shapes, tasks, limit, include_path, num_fewshot, offline, manager)
    else:
        result = _eval_ppl(console, loaded, strat, strategy, shapes, split, seq_len, windows or None, spread)
    if out is not None:
        _write_json(out, {**result, "strategy": strategy.name})
        console.print(f"wrote {out}", highlight=False)


def _write_json(path: Path, obj: dict) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _eval_ppl(console, loaded, strat, strategy: Path, shapes, split: str, seq_len: int,  # noqa: ANN001
              windows: Optional[int], spread: bool) -> dict:
    from amoeba_core.evaluate import Evaluator, compare

    cache = strategy.parent / f".{strategy.stem}.cache-{loaded.fingerprint}" / "eval_scores.jsonl"
    ev = Evaluator(loaded, strat, split=split, seq_len=seq_len, max_windows=windows, cache=cache, spread=spread)
    scores = []
    for s in shapes:
        r = ev.score(s)
        scores.append(r)
        n = loaded.geometry.scaled(s).n_params()
        console.print(f"{s.key}: {r.fmt()}  ({r.n_tokens} {split} tokens, 90% interval over {r.n_units} "
                      f"{r.ci_unit}s; {n / 1e6:.1f} M params, {'cached' if r.cached else f'{r.seconds:.1f} s'})",
                      highlight=False, soft_wrap=True)
    rows = [{"shape": r.shape_key, "ppl": r.ppl, "ppl_ci90": [r.ppl_lo, r.ppl_hi], "top1": r.top1_acc,
             "top1_ci90": [r.top1_lo, r.top1_hi], "n_tokens": r.n_tokens, "ci_unit": r.ci_unit, "n_units": r.n_units}
            for r in scores]
    pairs = []
    for r in scores[1:]:
        for metric in ("ppl", "top1"):
            d = compare(r, scores[0], metric)
            verdict = d.verdict(lower_is_better=metric == "ppl", names=(r.shape_key, scores[0].shape_key))
            console.print(f"  {r.shape_key} - {scores[0].shape_key}: {metric} {d.diff.fmt(4 if metric == 'top1' else 3)}"
                          f" (paired, 90%): {verdict}", highlight=False, soft_wrap=True)
            pairs.append({"a": r.shape_key, "b": scores[0].shape_key, "metric": metric, **d.to_dict(),
                          "verdict": verdict})
    from amoeba_core.data import data_record

    return {"split": split, "seq_len": seq_len, "windows": ev.n_windows, "spread": spread,
            "documents": len(set(ev.window_doc or ())), "scores": rows, "paired": pairs,
            "data": data_record(seq_len=seq_len, windows=ev.n_windows)}


def _eval_tasks(console, loaded, strat, shapes, tasks: list[str], limit: Optional[int],  # noqa: ANN001
                include_path: Optional[Path], num_fewshot: Optional[int], offline: bool, manager) -> dict:
    from amoeba_core.tasks import compare_items, evaluate_tasks

    per_shape = []
    for s in shapes:
        t0 = time.perf_counter()
        rows = evaluate_tasks(loaded, strat, s, tasks, limit=limit, include_path=include_path,
                              num_fewshot=num_fewshot, offline=offline, manager=manager)
        console.print(f"{s.key} ({loaded.geometry.scaled(s).n_params() / 1e6:.1f} M params, physical subnet via "
                      f"lm-eval HFLM, {time.perf_counter() - t0:.1f} s):", highlight=False, soft_wrap=True)
        for r in rows:
            console.print(f"  {r.fmt()}", highlight=False, soft_wrap=True)
        per_shape.append(rows)
    pairs = []
    for rows in per_shape[1:]:
        for r in rows:
            base = next((b for b in per_shape[0] if (b.task, b.metric, b.filter) == (r.task, r.metric, r.filter)), None)
            if base is None or not r.per_item or not base.per_item:
                continue
            d = compare_items(r, base)
            verdict = d.verdict(lower_is_better=False, names=(r.shape_key, base.shape_key))
            console.print(f"  {r.shape_key} - {base.shape_key}: {r.task} {r.metric} {d.diff.fmt(4)} "
                          f"(paired over {r.n} items, 90%): {verdict}", highlight=False, soft_wrap=True)
            pairs.append({"a": r.shape_key, "b": base.shape_key, "task": r.task, "metric": r.metric, **d.to_dict(),
                          "verdict": verdict})
    return {"tasks": tasks, "limit": limit, "scores": [r.to_dict() for rows in per_shape for r in rows],
            "paired": pairs}


def export(
    strategy: Path = typer.Option(..., help="Strategy YAML from `amoeba select`."),
    shape: str = typer.Option(..., help="Shape like d24-w0.75."),
    format: str = typer.Option("hf", "--format", help="hf | gguf."),  # noqa: A002
    out: Path = typer.Option(..., help="Output folder (hf) or .gguf file (gguf)."),
    model: Optional[str] = typer.Option(None, help="Model (default: the strategy's source)."),
    adapters: Optional[Path] = typer.Option(None, help="Stage 2 output folder (`amoeba finetune --out`)."),
    device: str = typer.Option("auto", help=_DEVICE_HELP + " The subnet is extracted there; files hold its dtype "
                                                          "(hf) or f16 (gguf)."),
    dtype: Optional[str] = typer.Option(None, help=_DTYPE_HELP),
) -> None:
    """Write a physical subnet as an HF folder (with tokenizer) or a GGUF file."""
    from amoeba_core.export import FORMATS, export_subnet
    from amoeba_core.strategy import Strategy

    where = _placement(device, dtype)
    if format not in FORMATS:
        raise AmoebaError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if out.exists():
        raise AmoebaError(f"{out} already exists; refusing to overwrite")
    s = Strategy.load(strategy).resolve(shape)
    loaded, strat = _load_for(strategy, model, adapters, where)
    path = export_subnet(loaded, strat, s, out, format)  # type: ignore[arg-type]
    _console().print(f"wrote {format} subnet {s.key} ({loaded.geometry.scaled(s).n_params() / 1e6:.1f} M params) "
                     f"to {path}", highlight=False)


COMMANDS = {"select": select, "eval": eval, "export": export}
