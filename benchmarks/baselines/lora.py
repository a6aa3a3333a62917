"""The paper's baseline protocol: one plain LoRA per pruned shape, the same budget for every method.

AmoebaLLM's Table 1 fine-tunes each baseline's pruned model with its own LoRA (and AmoebaLLM†
is the same per-shape LoRA on AmoebaLLM's own shape). Here every chosen shape gets
``amoeba_core.finetune`` with one shape, one shared LoRA (no SMoL), no distillation and no
balancing: the same code path as ``benchmarks/stage2_ablation.py``'s per-shape rows.

A method's shape is expressed as a strategy the trainer and the evaluator understand:

* AmoebaLLM and FLAP: their own strategy (depth layers and width rankings);
* ShortGPT and Shortened LLaMA (depth only): a drop-nothing-else strategy whose only depth keeps
  exactly the method's layers;
* Torch-Pruning: the pruned model itself at full depth and width (its MLPs are already narrower).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amoeba_core.finetune import ADAPTERS, CHECKPOINT, FinetuneConfig, apply_adapters, finetune, steps_done
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy


@dataclass(frozen=True)
class LoraBudget:
    """One per-shape LoRA run: optimizer steps of ``batch`` windows of ``seq_len`` tokens."""

    steps: int
    seq_len: int = 128
    batch: int = 1
    rank: int = 16
    lr: float = 1e-3

    def config(self, shape_key: str) -> FinetuneConfig:
        return FinetuneConfig(steps=self.steps, k=1, seq_len=self.seq_len, batch=self.batch, lr=self.lr,
                              warmup=max(1, self.steps // 50), rank=self.rank, smol=False, distill=False,
                              balance=False, train_shapes=[shape_key], checkpoint_every=25)

    @property
    def tokens(self) -> int:
        return self.steps * self.seq_len * self.batch


def target(loaded: LoadedModel, strategy: Strategy | None, shape: SubnetShape,
           model: LoadedModel | None = None) -> tuple[LoadedModel, Strategy, SubnetShape]:
    """(base model, strategy, shape) to train and score one candidate of a method."""
    base = model or loaded
    if model is not None:  # Torch-Pruning: the pruned model whole
        strat = Strategy.trivial(base.geometry, base.fingerprint, base.source)
        return base, strat, strat.shape(base.geometry.n_layers, 1.0)
    if strategy is not None:
        return base, strategy, shape
    strat = Strategy.trivial(base.geometry, base.fingerprint, base.source).with_(
        depth_layers={shape.depth: tuple(shape.layers)}, metric="given layers")
    return base, strat, strat.shape(shape.depth, 1.0)


def _fresh(base: LoadedModel) -> LoadedModel:
    return dataclasses.replace(base, model=copy.deepcopy(base.model))


def train_per_shape(base: LoadedModel, strategy: Strategy, shape: SubnetShape, budget: LoraBudget,
                    out: Path) -> tuple[LoadedModel, dict[str, Any]]:
    """A copy of ``base`` with a plain LoRA trained on ``shape`` into ``out`` (resumed if killed, loaded if done)."""
    cfg = budget.config(shape.grid_key)
    done = (out / ADAPTERS).is_file() and (out / CHECKPOINT).is_file() and steps_done(out) >= cfg.steps
    if not done:
        finetune(_fresh(base), strategy, cfg, out, resume=(out / CHECKPOINT).is_file())
    logs = [line for line in (out / "train_log.jsonl").read_text().splitlines() if line]
    secs = sum(json.loads(x)["seconds"] for x in logs)
    record = {"steps": len(logs), "tokens": len(logs) * budget.seq_len * budget.batch, "rank": budget.rank,
              "train_seconds": round(secs, 1), "dir": out.name}
    return apply_adapters(_fresh(base), strategy, out), record
