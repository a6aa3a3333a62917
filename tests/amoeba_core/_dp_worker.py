"""One Stage 1 depth process for tests/amoeba_core/test_distributed_dp.py (run directly or under torchrun)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from amoeba_core.distributed import init_distributed
from amoeba_core.model import _finish, random_llama, tiny_tokenizer
from amoeba_core.select import select_depth
from amoeba_core.shape import ModelGeometry


def run(out: str) -> None:
    torch.set_num_threads(1)
    rank, world = init_distributed()
    g = replace(ModelGeometry.preset("tiny"), n_layers=10, name="tiny10")
    deep = _finish(random_llama(g, "float32", seed=1), tiny_tokenizer(g.vocab), "tiny10")
    result, calib = select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=Path(out) / "dp.jsonl",
                                 refine=(7,))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "layers": {str(d): list(v) for d, v in result.layers.items()},
        "scores": {str(d): v for d, v in result.scores.items()}, "evaluated": calib.n_evaluated,
        "refined": {str(d): sorted(r.removed) for d, r in result.refined.items()}}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    run(ap.parse_args().out)
