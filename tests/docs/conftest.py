"""A tiny real run for the docs tests: a PyTorch decode table of the random `tiny` LLaMA on this host
and a random search over depth x width (real evaluator), as tests/search builds them, smaller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from profiler.measure import MeasureConfig

FAST = MeasureConfig(warmup=1, min_repeats=3, max_repeats=5, max_seconds=0.2, rel_ci=0.1, rounds=1, min_seconds=0)


@pytest.fixture(scope="session")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from profiler.device import detect_host, save_device
    from profiler.plan import make_plan, run_profile

    root = tmp_path_factory.mktemp("docs-profiles")
    save_device(detect_host(threads=1), root)
    plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode",), 16, "float32", 1,
                     measure_cfg=FAST)
    assert run_profile(plan, root).written == 8
    return root


@pytest.fixture(scope="session")
def strategy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy

    m = load_model("tiny")
    path = tmp_path_factory.mktemp("docs-strategy") / "strategy.yaml"
    Strategy.trivial(m.geometry, m.fingerprint, "tiny", widths=(1.0, 0.5)).save(path)
    return path


@pytest.fixture(scope="session")
def run_dir(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from amoeba.cli import app

    run = tmp_path_factory.mktemp("docs-runs") / "tiny"
    res = CliRunner().invoke(app, ["search", "--strategy", str(strategy_path), "--device", "cpu-host", "--flow",
                                   "pytorch", "--method", "random", "--trials", "16", "--run", str(run),
                                   "--widths", "1,0.5", "--max-windows", "2", "--seq-len", "32",
                                   "--root", str(profiles)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


def env_with(profiles: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AMOEBA_PROFILES"] = str(profiles)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
