"""`amoeba select | eval | export` (Stage 1; thin wrappers, heavy imports inside)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from amoeba_core.errors import AmoebaError


def _console():  # noqa: ANN202 - rich Console
    from rich.console import Console

    return Console()


def _threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def select(
    model: str = typer.Option("smollm2-135m", help="smollm2-135m, tiny, a .gguf file or an HF folder."),
    min_depth: int = typer.Option(..., help="Smallest depth the strategy must offer."),
    widths: str = typer.Option("1,0.875,0.75,0.625", help="Comma-separated width ratios in (0, 1]."),
    out: Path = typer.Option(..., help="Strategy YAML to write."),
    calib_seq_len: int = typer.Option(256, help="Tokens per calibration window."),
    calib_windows: int = typer.Option(1, help="Calibration windows for the depth DP metric."),
    stats_windows: int = typer.Option(4, help="Calibration windows for width statistics."),
    val_windows: int = typer.Option(2, help="Validation windows for choosing the width metric."),
    threads: int = typer.Option(0, help="torch threads (0: default)."),
) -> None:
    """Stage 1: DP depth selection + importance width ranking -> strategy YAML (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from amoeba_core.depth import check_min_depth
    from amoeba_core.model import load_model
    from amoeba_core.select import select_strategy
    from amoeba_core.shape import parse_widths

    w = parse_widths(widths)
    if out.suffix not in (".yaml", ".yml"):
        raise AmoebaError(f"--out must be a .yaml file, got {out}")
    if out.exists() and out.is_dir():
        raise AmoebaError(f"--out {out} is a folder")
    _threads(threads)
    console = _console()
    t0 = time.perf_counter()
    loaded = load_model(model)
    check_min_depth(loaded.geometry.n_layers, min_depth)
    console.print(f"loaded {loaded.source} ({loaded.fingerprint}) in {time.perf_counter() - t0:.1f} s", highlight=False)
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
                                   val_windows=val_windows, progress=progress)
    total = time.perf_counter() - t0
    strategy = strategy.with_(stats={**strategy.stats, "wall_seconds_with_load": round(total, 2)})
    strategy.save(out)
    st = strategy.stats
    console.print(f"depth DP: {st['dp_evaluations']} evaluations ({st['dp_evaluations_from_cache']} from cache) "
                  f"in {st['dp_seconds']:.1f} s on {st['dp_calib_tokens']} calibration tokens", highlight=False)
    console.print(f"width metric: {strategy.width_metric} (val ppl per metric: {json.dumps(st['width_metric_val_ppl'])})",
                  highlight=False)
    for d in strategy.depths:
        if d < loaded.geometry.n_layers:
            dropped = sorted(set(range(loaded.geometry.n_layers)) - set(strategy.depth_layers[d]))
            console.print(f"  d{d}: drops {dropped}", highlight=False)
    console.print(f"wrote {out}; total time {total:.1f} s ({total / 60:.1f} min)", highlight=False)


def _load_for(strategy_path: Path, model: Optional[str], adapters: Optional[Path] = None):  # noqa: ANN202
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy

    strategy = Strategy.load(strategy_path)
    loaded = load_model(model or strategy.model_source)
    if loaded.fingerprint != strategy.model_fingerprint:
        raise AmoebaError(f"strategy {strategy_path} was made for model {strategy.model_fingerprint} "
                          f"({strategy.model_source}), but the loaded model is {loaded.fingerprint}")
    if adapters is not None:
        from amoeba_core.finetune import apply_adapters

        loaded = apply_adapters(loaded, strategy, adapters)
    return loaded, strategy


def eval(  # noqa: A001 - the command is called eval
    strategy: Path = typer.Option(..., help="Strategy YAML from `amoeba select`."),
    shape: list[str] = typer.Option(..., "--shape", help="Shape(s) like d24-w0.75 (repeatable)."),
    split: str = typer.Option("test", help="calib | val | test | train."),
    seq_len: int = typer.Option(256, help="Tokens per window (stride = seq_len)."),
    windows: int = typer.Option(16, help="Windows to score."),
    model: Optional[str] = typer.Option(None, help="Model (default: the strategy's source)."),
    adapters: Optional[Path] = typer.Option(None, help="Stage 2 output folder (`amoeba finetune --out`)."),
    threads: int = typer.Option(0, help="torch threads (0: default)."),
) -> None:
    """Perplexity and next-token top-1 accuracy of shapes of a strategy (cached per shape)."""
    from amoeba_core.data import SPLITS
    from amoeba_core.evaluate import Evaluator
    from amoeba_core.strategy import Strategy

    if split not in SPLITS:
        raise AmoebaError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    strat = Strategy.load(strategy)
    shapes = [strat.resolve(s) for s in shape]  # bad shapes fail before the model loads
    _threads(threads)
    loaded, strat = _load_for(strategy, model, adapters)
    cache = strategy.parent / f".{strategy.stem}.cache-{loaded.fingerprint}" / "eval_scores.jsonl"
    ev = Evaluator(loaded, strat, split=split, seq_len=seq_len, max_windows=windows, cache=cache)
    console = _console()
    for s in shapes:
        r = ev.score(s)
        n = loaded.geometry.scaled(s).n_params()
        console.print(f"{s.key}: ppl {r.ppl:.3f}  top1 {r.top1_acc:.4f}  ({r.n_tokens} {split} tokens, "
                      f"{n / 1e6:.1f} M params, {'cached' if r.cached else f'{r.seconds:.1f} s'})", highlight=False)


def export(
    strategy: Path = typer.Option(..., help="Strategy YAML from `amoeba select`."),
    shape: str = typer.Option(..., help="Shape like d24-w0.75."),
    format: str = typer.Option("hf", "--format", help="hf | gguf."),  # noqa: A002
    out: Path = typer.Option(..., help="Output folder (hf) or .gguf file (gguf)."),
    model: Optional[str] = typer.Option(None, help="Model (default: the strategy's source)."),
    adapters: Optional[Path] = typer.Option(None, help="Stage 2 output folder (`amoeba finetune --out`)."),
) -> None:
    """Write a physical subnet as an HF folder (with tokenizer) or a GGUF file."""
    from amoeba_core.export import FORMATS, export_subnet
    from amoeba_core.strategy import Strategy

    if format not in FORMATS:
        raise AmoebaError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if out.exists():
        raise AmoebaError(f"{out} already exists; refusing to overwrite")
    s = Strategy.load(strategy).resolve(shape)
    loaded, strat = _load_for(strategy, model, adapters)
    path = export_subnet(loaded, strat, s, out, format)  # type: ignore[arg-type]
    _console().print(f"wrote {format} subnet {s.key} ({loaded.geometry.scaled(s).n_params() / 1e6:.1f} M params) "
                     f"to {path}", highlight=False)


COMMANDS = {"select": select, "eval": eval, "export": export}
