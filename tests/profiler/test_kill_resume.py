"""SIGKILL a real `amoeba profile` mid-grid, re-run it: every grid row exists exactly once."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from profiler.table import LatencyTable

from tests.profiler.conftest import PROFILE_TINY, cli_env

AMOEBA = [sys.executable, "-m", "amoeba"]
ARGS = [*PROFILE_TINY, "--depths", "1,2,3,4", "--widths", "1,0.75,0.5", "--prompt-len", "16", "--repeats", "3",
        "--rounds", "1", "--threads", "1"]


def _rows(path: Path) -> int:
    """Rows committed to the store's SQLite file (read with the standard library, as any reader would)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as c:
            return int(c.execute("SELECT count(*) FROM amoeba_latency").fetchone()[0])
    except sqlite3.Error:  # not there yet
        return 0


def test_sigkill_mid_grid_then_resume(root: Path) -> None:
    table = root / "amoeba.db"
    env = cli_env(root)
    proc = subprocess.Popen(AMOEBA + ARGS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while _rows(table) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _rows(table)
    assert 5 <= killed_at < 24, f"kill landed at {killed_at} rows (rc {proc.returncode})"

    done = subprocess.run(AMOEBA + ARGS, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{killed_at} already present" in done.stdout.replace("\n", " ")
    df = LatencyTable("cpu-host", "pytorch", "tiny", root).df
    keys = list(zip(df.depth, df.width.round(3), df.phase))
    grid = set(itertools.product((1, 2, 3, 4), (1.0, 0.75, 0.5), ("prefill", "decode")))
    assert len(keys) == len(set(keys)) == 24
    assert set(keys) == grid
    assert (df.source == "measured").all() and (df.n >= 3).all()
