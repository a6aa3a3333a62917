"""--device/--dtype on the model-side commands (real CLI, real subprocess) and running in another precision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amoeba_core.device import place, resolve_device
from amoeba_core.errors import AmoebaError
from amoeba_core.evaluate import Evaluator
from amoeba_core.model import load_model
from amoeba_core.shape import SubnetShape

ROOT = Path(__file__).resolve().parents[2]


def _amoeba(*argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from amoeba.cli import main; sys.argv[0] = 'amoeba'; main()"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["select", "--model", "tiny", "--min-depth", "2", "--out", "s.yaml"],
                                     ["eval", "--strategy", "s.yaml", "--shape", "d4-w1"],
                                     ["export", "--strategy", "s.yaml", "--shape", "d4-w1", "--out", "x"]])
def test_absent_cuda_is_one_line_exit_2(command: list[str], tmp_path: Path) -> None:
    r = _amoeba(*command, "--device", "cuda")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "cuda" in lines[0], lines
    assert not (tmp_path / "s.yaml").exists()


def test_bad_names_are_refused() -> None:
    with pytest.raises(AmoebaError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(AmoebaError, match="unknown dtype"):
        place("cpu", "int3")
    assert place("cpu", None) == (torch.device("cpu"), torch.float32)


def test_evaluator_runs_in_bfloat16_and_keys_it() -> None:
    torch.set_num_threads(1)
    fp32 = load_model("tiny")
    ev32 = Evaluator(fp32, split="val", seq_len=32, max_windows=2)
    bf16 = load_model("tiny")
    bf16.model.to(dtype=torch.bfloat16)
    ev16 = Evaluator(bf16, split="val", seq_len=32, max_windows=2)
    shape = SubnetShape((0, 1, 3), 1.0)
    a, b = ev32.score(shape), ev16.score(shape)
    assert ev32.key(shape) != ev16.key(shape) and ev16.key(shape).endswith("|bfloat16")
    assert abs(a.ppl - b.ppl) / a.ppl < 0.05  # bf16 rounding only
