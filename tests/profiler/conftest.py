from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from amoeba_core.shape import ModelGeometry
from profiler.device import HOST, detect_host, save_device
from profiler.measure import MeasureConfig
from tests._runs import cli_env, profile_tiny  # noqa: F401 (cli_env: re-exported)

REPO = Path(__file__).resolve().parents[2]
FAST = MeasureConfig(warmup=1, min_repeats=3, max_repeats=6, max_seconds=0.3, rel_ci=0.05, rounds=1, min_seconds=0)
# A tiny geometry whose layers cost enough (prefill) for depth to dominate timing noise.
SMALL = ModelGeometry(
    n_layers=6, hidden=256, n_heads=4, n_kv_heads=2, intermediate=1024, vocab=512, max_position=512, name="small"
)


@pytest.fixture(scope="session")
def host_spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the spec-only devices of the repo and a real detected cpu-host (once per session)."""
    root = tmp_path_factory.mktemp("profiles-base")
    for name in ("a5000", "orin-nx-16gb"):
        shutil.copytree(REPO / "device_profiles" / name, root / name)
    save_device(detect_host(threads=1), root)
    assert (root / HOST / "device.yaml").is_file()
    return root


@pytest.fixture
def root(host_spec_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh profiles root (copy of the session base) also exported as AMOEBA_PROFILES."""
    r = tmp_path / "profiles"
    shutil.copytree(host_spec_dir, r)
    monkeypatch.setenv("AMOEBA_PROFILES", str(r))
    return r


@pytest.fixture(scope="session")
def measured_root(host_spec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding a real PyTorch table of the `tiny` preset (depths 1-4, widths 1 and 0.5)."""
    r = tmp_path_factory.mktemp("measured") / "profiles"
    shutil.copytree(host_spec_dir, r)
    return profile_tiny(r, ("prefill", "decode"), prompt_len=32, cfg=FAST, spec=False)


# `amoeba profile` of `tiny` on this host: the arguments the CLI tests extend
PROFILE_TINY = ["profile", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny"]
