"""One Stage 2 process for tests/stage2/test_distributed.py (run directly or under torchrun)."""

from __future__ import annotations

import argparse

import torch

from amoeba_core.finetune import FinetuneConfig, finetune, init_distributed
from amoeba_core.model import load_model
from amoeba_core.strategy import Strategy


def run(out: str, grad_accum: int, steps: int, resume: bool = False, stop_after: int | None = None) -> None:
    torch.set_num_threads(1)
    init_distributed()
    loaded = load_model("tiny")
    strategy = Strategy.trivial(loaded.geometry, loaded.fingerprint, loaded.source, widths=(1.0, 0.75, 0.5)).with_(
        depth_layers={4: (0, 1, 2, 3), 3: (0, 1, 3), 2: (0, 3)}, metric="test")
    cfg = FinetuneConfig(steps=steps, k=3, seq_len=32, batch=2, grad_accum=grad_accum, lr=5e-3, warmup=1, rank=4,
                         experts=3, top_k=2, checkpoint_every=1)
    finetune(loaded, strategy, cfg, out, resume=resume, stop_after=stop_after)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    run(a.out, a.grad_accum, a.steps, a.resume)
