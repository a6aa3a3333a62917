"""Widths are validated on the value typed, before anything is written (issue 13 item 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, parse_ints, parse_widths
from tests.profiler.conftest import cli_env


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("0.0001", "width 0.0001 rounds to 0.000"),
        ("1,0.0004", "width 0.0004 rounds to 0.000"),
        ("1,,0.5", "empty item in widths '1,,0.5'"),
        ("1,0.5,", "empty item in widths"),
        (" ", "no widths given"),
        ("1,abc", "width must be a number"),
        ("1.5", "width must be in (0, 1], got 1.5"),
        ("-0", "width must be in (0, 1], got -0"),
        ("nan", "width must be in (0, 1], got nan"),
        ("0.8751,0.875", "widths 0.8751 and 0.875 are the same width 0.875"),
    ],
)
def test_parse_widths_rejects(text: str, msg: str) -> None:
    with pytest.raises(AmoebaError) as e:
        parse_widths(text)
    assert msg in str(e.value)


def test_parse_widths_and_ints_accept() -> None:
    assert parse_widths(" 1, 0.875 ,0.0005") == (1.0, 0.875, 0.001)
    assert parse_ints("12, 18") == (12, 18)
    with pytest.raises(AmoebaError, match="empty item in depths"):
        parse_ints("12,,18")


def test_width_that_rounds_to_zero_heads_or_channels() -> None:
    smol = ModelGeometry.preset("smollm2-135m")  # 9 heads, 1536 MLP channels
    with pytest.raises(
        AmoebaError, match=r"width 0\.05 keeps 0\.45 of the 9 attention heads .* smallest width is 0\.056"
    ):
        smol.check_width(0.05)
    assert smol.check_width(0.056) == 0.056
    assert smol.scaled_dims(2, 0.056).n_heads == 1
    mha = ModelGeometry(n_layers=2, hidden=4096, n_heads=64, n_kv_heads=64, intermediate=320, vocab=8, name="wide")
    with pytest.raises(AmoebaError, match=r"keeps 12\.8 of the 320 MLP channels .* smallest width is 0\.051"):
        mha.check_width("0.04")
    with pytest.raises(AmoebaError, match="width 0.05 keeps 16.0 of the 320"):  # 0.5 blocks: rounds to 0
        mha.check_width(0.05)
    assert mha.check_width(0.051) == 0.051 and mha.scaled_dims(1, 0.051).intermediate == 32


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amoeba", *args], env=cli_env(root), capture_output=True, text=True,
                          timeout=120)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


PROFILE = ["profile", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--depths", "1,2",
           "--repeats", "3", "--rounds", "1", "--threads", "1"]


@pytest.mark.parametrize(
    ("widths", "msg"),
    [
        ("--widths=0.0001", "width 0.0001 rounds to 0.000"),
        ("--widths=1,,0.5", "empty item in widths"),
        ("--widths=1,0.1", "width 0.1 keeps 0.40 of the 4 attention heads of tiny"),
    ],
)
def test_profile_rejects_width_before_writing(root: Path, widths: str, msg: str) -> None:
    before = _files(root)
    assert not (root / "cpu-host" / "pytorch-tiny.yaml").exists()
    r = _run(root, *PROFILE, widths)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.stderr
    assert _files(root) == before  # no header, no lock file, no table


def test_profile_rejects_width_on_existing_table(measured_root: Path, tmp_path: Path) -> None:
    import shutil

    r0 = tmp_path / "p"
    shutil.copytree(measured_root, r0)
    before = _files(r0)  # lock files included: a rejected width must not even take the lock
    r = _run(r0, *PROFILE, "--widths=0.0001")
    assert r.returncode == 2 and "0.0001" in r.stderr
    assert _files(r0) == before
