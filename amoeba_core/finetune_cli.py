"""`amoeba finetune` (Stage 2; thin wrapper, heavy imports inside)."""

from __future__ import annotations

from typing import Optional

import time
from pathlib import Path

import typer

from amoeba_core.errors import AmoebaError


def finetune(
    strategy: Path = typer.Option(..., help="Stage-1 strategy YAML (from `amoeba select`)."),
    steps: int = typer.Option(..., help="Optimizer steps."),
    out: Path = typer.Option(..., help="Output folder (adapters.pt, smol.json, checkpoint.pt, train_log.jsonl)."),
    model: Optional[str] = typer.Option(None, help="Model (default: the strategy's source): smollm2-135m, tiny, a .gguf file or an HF folder."),
    k: int = typer.Option(4, help="Shapes per step (sandwich: largest, smallest, K-2 random)."),
    seq_len: int = typer.Option(128, help="Tokens per training window."),
    batch: int = typer.Option(2, help="Windows per micro-batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    lr: float = typer.Option(2e-4, help="AdamW peak learning rate (warm-up then cosine)."),
    rank: int = typer.Option(8, help="LoRA rank of each expert."),
    experts: int = typer.Option(4, help="LoRA experts per adapted linear (SMoL)."),
    top_k: int = typer.Option(2, help="Experts the gate picks per shape."),
    min_depth: int = typer.Option(0, help="Sample only shapes at least this deep (0: all strategy depths)."),
    device: str = typer.Option("auto", help="auto (the first accelerator present), cpu, cuda, cuda:N or mps."),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 (default: bfloat16 on CUDA with "
                                                    "bf16, float16 on MPS, float32 on CPU)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Recompute each decoder layer in backward: less activation memory, "
                                                     "about one more forward per step."),
    checkpoint_every: int = typer.Option(10, help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    seed: int = typer.Option(0, help="Seed for adapters, batches, shapes and gate noise."),
    threads: int = typer.Option(0, help="torch threads (0: default)."),
) -> None:
    """Stage 2: one-for-all fine-tuning of SMoL adapters for every shape of a strategy.

    The recipe's ablations (one shared LoRA, no distillation, no balancing) are fields of
    ``amoeba_core.finetune.FinetuneConfig`` and are run by ``benchmarks/stage2_ablation.py``."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from amoeba_core.finetune import FinetuneConfig, StepReport, finetune as run, steps_done
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy

    if steps < 1:
        raise AmoebaError(f"--steps must be >= 1, got {steps}")
    if threads > 0:
        torch.set_num_threads(threads)
    if not strategy.is_file():
        raise AmoebaError(f"strategy file {strategy} does not exist")
    if resume and not (out / "checkpoint.pt").is_file():
        raise AmoebaError(f"cannot resume: no checkpoint at {out / 'checkpoint.pt'}")
    from amoeba_core.cli import _placement, _to
    from amoeba_core.geometry import ModelGeometry
    from amoeba_core.memory import plan_memory

    from amoeba_core.distributed import init_distributed, local_device

    proc_rank, world = init_distributed()  # under torchrun: one process per device, rank 0 writes
    where = _placement(local_device(device), dtype)
    console = Console(quiet=proc_rank != 0)
    source = model or Strategy.load(strategy).model_source
    try:
        geometry = ModelGeometry.resolve(source)
    except AmoebaError:
        geometry = None  # load_model names what is wrong with the model
    if geometry is not None:
        plan = plan_memory(geometry, where[1], batch=batch, seq_len=seq_len, train=True, lora_rank=rank,
                           lora_experts=experts, grad_checkpointing=gradient_checkpointing, device=where[0]).check()
        console.print(plan.fmt(), highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    loaded = _to(load_model(source), where)
    strat = Strategy.load(strategy, expect_fingerprint=loaded.fingerprint)
    cfg = FinetuneConfig(steps=steps, k=k, seq_len=seq_len, batch=batch, grad_accum=grad_accum, lr=lr, rank=rank,
                         experts=experts, top_k=top_k, min_depth=min_depth or None, checkpoint_every=checkpoint_every,
                         gradient_checkpointing=gradient_checkpointing, seed=seed)
    start = steps_done(out) if resume else 0
    console.print(f"loaded {loaded.source} ({loaded.fingerprint}) on {where[0]} in {where[1]} in {time.perf_counter() - t0:.1f} s; "
                  f"{'resuming at step ' + str(start) if resume else 'new run'} -> {out}", highlight=False,
                  soft_wrap=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[losses]}"), console=console) as bar:
        task = bar.add_task("fine-tuning", total=steps, completed=start, losses="")

        def on_step(r: StepReport) -> None:
            losses = " ".join(f"{k}={v:.3f}" for k, v in r.losses.items())
            bar.update(task, completed=r.step, losses=f"{losses} lr={r.lr:.2e} {r.seconds:.1f}s/step")

        run(loaded, strat, cfg, out, resume=resume, on_step=on_step)
    console.print(f"adapters written to {out} (use --adapters {out}); {time.perf_counter() - t0:.1f} s", highlight=False)


COMMANDS = {"finetune": finetune}
