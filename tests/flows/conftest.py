from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def flow_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache folder for GGUF files and ONNX exports (one per test session)."""
    return tmp_path_factory.mktemp("flow-cache")
