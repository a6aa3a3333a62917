"""A profiles folder of the earlier file format (committed fixture: Parquet rows + YAML header with reference
blocks, written by `amoeba profile` before the store) opens in the store with the same rows, levels and
estimates, once; Parquet export/import round-trips a table."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from profiler.lookup import LatencyModel
from profiler.table import LatencyTable
from tests.profiler.conftest import cli_env

FIXTURE = Path(__file__).with_name("fixtures") / "earlier_format"


@pytest.fixture
def old_root(tmp_path: Path) -> Path:
    root = tmp_path / "profiles"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("expected.json"))
    return root


def _count(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT count(*) FROM amoeba_latency").fetchone()[0])


def test_earlier_format_migrates_on_first_open_with_the_same_estimates(old_root: Path) -> None:
    want = json.loads((FIXTURE / "expected.json").read_text())
    t = LatencyTable("cpu-host", "pytorch", "tiny", old_root)
    assert len(t.df) == want["rows"] and len(t.reference_levels()) == want["levels"]
    for phase in ("decode", "prefill"):
        m = LatencyModel.open("cpu-host", "pytorch", "tiny", phase, 16, root=old_root)
        for name, (ms, source, lo, hi) in want["estimates"].items():
            if not name.startswith(phase):
                continue
            d, w = name.split("/")[1].removeprefix("d").split("-w")
            e = m.estimate(int(d), float(w))
            assert (e.source, round(e.ms, 9)) == (source, round(ms, 9)), name
            assert (e.lo_ms is None) == (lo is None) and (lo is None or abs(e.lo_ms - lo) < 1e-9), name
    # imported once: opening again adds nothing; the files are left as they were
    LatencyTable("cpu-host", "pytorch", "tiny", old_root)
    assert _count(old_root / "amoeba.db") == want["rows"]
    assert (old_root / "cpu-host" / "pytorch-tiny.parquet").read_bytes() == \
        (FIXTURE / "cpu-host" / "pytorch-tiny.parquet").read_bytes()


def test_table_export_import_round_trip_through_the_cli(old_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    env = cli_env(old_root)
    amoeba = [sys.executable, "-m", "amoeba", "table"]
    r = subprocess.run([*amoeba, "export", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny",
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other"
    shutil.copytree(old_root / "cpu-host", other / "cpu-host", ignore=shutil.ignore_patterns("*.parquet", "*.yaml"))
    for expect in ("12 new rows", "0 new rows"):  # importing twice stores nothing new
        r = subprocess.run([*amoeba, "import", str(out), "--root", str(other)], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and expect in r.stdout, (r.stdout, r.stderr)
    a, b = LatencyTable("cpu-host", "pytorch", "tiny", old_root), LatencyTable("cpu-host", "pytorch", "tiny", other)
    assert a.df.drop(columns=["created"]).equals(b.df.drop(columns=["created"]))
    assert a.reference_levels() == b.reference_levels()
    r = subprocess.run([*amoeba, "import", str(tmp_path / "nope.parquet"), "--root", str(other)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr
