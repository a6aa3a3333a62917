from __future__ import annotations

import os
from pathlib import Path

import pytest

from profiler.measure import MeasureConfig

FAST = MeasureConfig(warmup=1, min_repeats=3, max_repeats=5, max_seconds=0.2, rel_ci=0.1, rounds=1, min_seconds=0)


@pytest.fixture(scope="session")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profiles root with this machine (cpu-host) and a real PyTorch decode table of `tiny`."""
    from profiler.device import detect_host, save_device
    from profiler.plan import make_plan, run_profile

    root = tmp_path_factory.mktemp("search-profiles")
    save_device(detect_host(threads=1), root)
    plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode", "prefill"), 16, "float32", 1,
                     measure_cfg=FAST)
    assert run_profile(plan, root).written == 16
    return root


@pytest.fixture(scope="session")
def strategy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Stage 1 strategy object for the tiny random LLaMA (drop-last depths, identity widths)."""
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy

    m = load_model("tiny")
    path = tmp_path_factory.mktemp("strategy") / "strategy.yaml"
    Strategy.trivial(m.geometry, m.fingerprint, "tiny", widths=(1.0, 0.75, 0.5)).save(path)
    return path


@pytest.fixture(scope="session")
def run_dir(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run where `amoeba search` evaluated every shape of a 4 x 5 space (random search, real evaluator)."""
    from typer.testing import CliRunner

    from amoeba.cli import app

    run = tmp_path_factory.mktemp("runs") / "tiny"
    res = CliRunner().invoke(app, ["search", "--strategy", str(strategy_path), "--device", "cpu-host", "--flow",
                                   "pytorch", "--method", "random", "--trials", "60", "--run", str(run),
                                   "--widths", "0.5:1:0.125", "--max-windows", "2", "--seq-len", "64",
                                   "--root", str(profiles)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


def env_with(profiles: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AMOEBA_PROFILES"] = str(profiles)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(autouse=True, scope="session")
def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
