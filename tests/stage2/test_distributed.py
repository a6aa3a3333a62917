"""Data-parallel Stage 2: 2 gloo processes under torchrun == 1 process with twice the accumulation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from amoeba_core.finetune import ADAPTERS, CHECKPOINT

from tests.stage2._dist_worker import run

WORKER = Path(__file__).with_name("_dist_worker.py")
TOL = 1e-4  # max abs difference of any adapter tensor: float32, two gradient-summation orders, then AdamW


def _torchrun(out: Path, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           "--out", str(out), "--grad-accum", "1", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


def _max_diff(a: Path, b: Path) -> float:
    x, y = torch.load(a / ADAPTERS, weights_only=True), torch.load(b / ADAPTERS, weights_only=True)
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_two_processes_equal_one_with_twice_the_accumulation(tmp_path: Path) -> None:
    _torchrun(tmp_path / "dp", "--steps", "3")
    run(str(tmp_path / "single"), grad_accum=2, steps=3)
    assert _max_diff(tmp_path / "dp", tmp_path / "single") < TOL
    run(str(tmp_path / "half"), grad_accum=1, steps=3)  # one rank's data only: must differ far beyond TOL
    assert _max_diff(tmp_path / "half", tmp_path / "single") > 10 * TOL
    ck = torch.load(tmp_path / "dp" / CHECKPOINT, weights_only=False)
    assert ck["world_size"] == 2 and ck["step"] == 3 and ck["windows_seen"] == 3 * 2 * 2
    assert ck["tokens_seen"] == ck["windows_seen"] * 32
    # resume under another world size: 1 step on 1 process, 2 more on 2 processes
    run(str(tmp_path / "mixed"), grad_accum=2, steps=3, stop_after=1)
    _torchrun(tmp_path / "mixed", "--steps", "3", "--resume")
    assert _max_diff(tmp_path / "mixed", tmp_path / "single") < TOL
