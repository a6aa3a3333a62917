"""Building blocks of the session fixtures that several test packages share: a real profiles root
with a measured PyTorch table of the random `tiny` LLaMA, its trivial Stage 1 strategy, and a real
`amoeba search` run over them (each conftest picks the sizes it needs)."""

from __future__ import annotations

import os
from pathlib import Path

from profiler.measure import MeasureConfig

FAST = MeasureConfig(warmup=1, min_repeats=3, max_repeats=5, max_seconds=0.2, rel_ci=0.1, rounds=1, min_seconds=0)


def cli_env(root: Path) -> dict[str, str]:
    """The environment of a CLI subprocess that reads profiles root ``root``."""
    env = dict(os.environ)
    env["AMOEBA_PROFILES"] = str(root)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def profile_tiny(root: Path, phases: tuple[str, ...], prompt_len: int = 16, cfg: MeasureConfig = FAST,
                 spec: bool = True) -> Path:
    """``root`` with this host's spec (``spec``) and a measured table of `tiny`: depths 1-4 x widths 1, 0.5."""
    from profiler.device import detect_host, save_device
    from profiler.plan import make_plan, run_profile

    if spec:
        save_device(detect_host(threads=1), root)
    plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), phases, prompt_len, "float32", 1,
                     measure_cfg=cfg)
    assert run_profile(plan, root).written == 8 * len(phases)
    return root


def tiny_strategy(path: Path, widths: tuple[float, ...]) -> Path:
    """A real Stage 1 strategy object for the tiny random LLaMA (drop-last depths, identity widths)."""
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy

    m = load_model("tiny")
    Strategy.trivial(m.geometry, m.fingerprint, "tiny", widths=widths).save(path)
    return path


def search_tiny(strategy: Path, profiles: Path, run: Path, trials: int, widths: str, seq_len: int) -> Path:
    """``amoeba search`` (random method, real evaluator on 2 windows) of ``strategy`` into ``run``."""
    from typer.testing import CliRunner

    from amoeba.cli import app

    res = CliRunner().invoke(app, ["search", "--strategy", str(strategy), "--device", "cpu-host", "--flow",
                                   "pytorch", "--method", "random", "--trials", str(trials), "--run", str(run),
                                   "--widths", widths, "--max-windows", "2", "--seq-len", str(seq_len),
                                   "--root", str(profiles)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run
