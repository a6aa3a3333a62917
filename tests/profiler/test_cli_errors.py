"""Bad input through the real `amoeba` CLI: one-line error, exit code 2, no table changed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.profiler.conftest import PROFILE_TINY, cli_env

PROFILE = [*PROFILE_TINY, "--depths", "1,2", "--widths", "1", "--repeats", "3", "--rounds", "1", "--threads", "1"]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amoeba", *args], env=cli_env(root), capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def croot(measured_root: Path, tmp_path: Path) -> Path:
    r = tmp_path / "p"
    shutil.copytree(measured_root, r)
    return r


CASES = {
    "unknown device": (["profile", "--device", "tpu9", *PROFILE[3:]], "unknown device 'tpu9'"),
    "roofline-only device": (["profile", "--device", "a5000", *PROFILE[3:]], "roofline-only"),
    "unknown flow": ([*PROFILE[:3], "--flow", "nope", *PROFILE[5:]], "unknown flow 'nope'"),
    "unknown model": ([*PROFILE[:5], "--model", "gpt9", *PROFILE[7:]], "unknown model 'gpt9'"),
    "width above 1": ([*PROFILE[:9], "--widths", "1.5", *PROFILE[11:]], "width must be in (0, 1]"),
    "width zero": ([*PROFILE[:9], "--widths", "0", *PROFILE[11:]], "width must be in (0, 1]"),
    "depth too deep": ([*PROFILE[:7], "--depths", "1,9", *PROFILE[9:]], "depth 9 outside 1..4"),
    "depths not ints": ([*PROFILE[:7], "--depths", "1,x", *PROFILE[9:]], "comma-separated integers"),
    "malformed shape": (
        ["predict", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--shape", "24x0.75"],
        "malformed shape",
    ),
    "shape too deep": (
        ["predict", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--shape", "d8-w1"],
        "depth 8 outside",
    ),
    "no such table": (
        ["predict", "--device", "cpu-host", "--flow", "pytorch", "--model", "llama2-7b", "--shape", "d8-w1"],
        "known on cpu-host: pytorch/tiny",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exit_2_one_line_nothing_changed(croot: Path, case: str) -> None:
    args, msg = CASES[case]
    before = _digest(croot)
    r = _run(croot, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.stderr
    assert _digest(croot) == before


@pytest.mark.parametrize("what", ["store", "earlier-format parquet"])
def test_corrupt_table_files(croot: Path, what: str) -> None:
    bad = croot / "amoeba.db" if what == "store" else croot / "cpu-host" / "pytorch-tiny.parquet"
    bad.write_bytes(b"\x00garbage: [" * 10)
    before = _digest(croot)
    for args in (
        PROFILE,
        ["predict", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--shape", "d2-w1"],
        ["table", "show", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny"],
    ):
        r = _run(croot, *args)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and bad.name in lines[0], r.stderr
        assert ("cannot open store" if what == "store" else "corrupt latency table") in lines[0], r.stderr
    assert _digest(croot) == before


def test_good_commands(croot: Path, tmp_path: Path) -> None:
    r = _run(croot, "predict", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--shape", "d2-w0.75")
    assert r.returncode == 0 and "predicted" in r.stdout and "roofline floor" in r.stdout
    out = tmp_path / "t.csv"
    r = _run(
        croot, "table", "export", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--out", str(out)
    )
    assert r.returncode == 0 and len(out.read_text().splitlines()) == 17
    r = _run(croot, "table", "show", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny")
    assert r.returncode == 0 and "ratio" in r.stdout and "contended" not in r.stdout, r.stdout
    assert "1.0000" in r.stdout  # the paired reference's own row: ratio 1
    r = _run(croot, "devices")
    assert r.returncode == 0 and "roofline-only" in r.stdout and "cpu-host" in r.stdout
