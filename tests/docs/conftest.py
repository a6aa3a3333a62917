"""A tiny real run for the docs tests: a PyTorch decode table of the random `tiny` LLaMA on this host
and a random search over depth x width (real evaluator), as tests/search builds them, smaller."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._runs import cli_env as env_with  # noqa: F401 (env_with: re-exported)
from tests._runs import profile_tiny, search_tiny, tiny_strategy


@pytest.fixture(scope="session")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return profile_tiny(tmp_path_factory.mktemp("docs-profiles"), ("decode",))


@pytest.fixture(scope="session")
def strategy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_strategy(tmp_path_factory.mktemp("docs-strategy") / "strategy.yaml", (1.0, 0.5))


@pytest.fixture(scope="session")
def run_dir(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search_tiny(strategy_path, profiles, tmp_path_factory.mktemp("docs-runs") / "tiny", 16, "1,0.5", 32)
