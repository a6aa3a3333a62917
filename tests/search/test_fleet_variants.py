"""Variants (a second, real bfloat16 table of the same device) in `amoeba query` and in a
multi-worker `amoeba serve` that learns about pushed data without a restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from amoeba.cli import app


@pytest.fixture(scope="module")
def two_variants(profiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's profiles root plus a real bfloat16 table of the same shapes."""
    from profiler.plan import make_plan, run_profile
    from tests.search.conftest import FAST

    root = tmp_path_factory.mktemp("two-variants") / "profiles"
    shutil.copytree(profiles, root, ignore=shutil.ignore_patterns(".*"))
    plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode", "prefill"), 16, "bfloat16", 1,
                     measure_cfg=FAST)
    assert run_profile(plan, root).written == 16
    return root


def _query(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["query", *args])
    return r.exit_code, r.output + (str(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else "")


def test_query_names_the_variant(measured_run: Path, two_variants: Path) -> None:
    base = ["--run", str(measured_run), "--root", str(two_variants), "--device", "cpu-host", "--flow", "pytorch",
            "--budget", "1000ms"]
    code, out = _query(*base)
    assert code == 0 and "variant float32 taken" in out and "others: bfloat16" in out and "[float32]" in out, out
    assert "measured" in out  # the latency's source is shown
    code, out = _query(*base, "--variant", "bfloat16")
    assert code == 0 and "[bfloat16]" in out and "taken" not in out, out
    code, out = _query(*base, "--variant", "q4_0")
    assert code != 0 and "unknown variant 'q4_0'" in out and "known: float32, bfloat16" in out, out


def test_workers_see_pushed_data_without_restart(measured_run: Path, profiles: Path, two_variants: Path,
                                                 tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AMOEBA_PROFILES": str(profiles), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "amoeba.cli", "serve", "--run", str(measured_run), "--port",
                             str(port), "--workers", "2", "--refresh-s", "0.2", "--db",
                             f"sqlite:///{tmp_path / 'service.db'}"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/devices", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:] \
                if proc.poll() is not None else "server did not start"
            time.sleep(0.3)
        assert httpx.get(f"{base}/devices").json()["variants"] == {"cpu-host": {"pytorch": ["float32"]}}
        for extra in (["--as", "edge-7"], []):  # a new device, then a new variant of a known one
            r = CliRunner().invoke(app, ["push", "--server", base, "--device", "cpu-host", "--root", str(two_variants),
                                         *extra], catch_exceptions=False)
            assert r.exit_code == 0 and "0 conflicting" in r.output, r.output
        # each request on a new connection: both workers answer some of them
        for _ in range(20):
            q = httpx.get(f"{base}/query", params={"device": "edge-7", "flow": "pytorch", "budget_ms": 1000})
            assert q.status_code == 200 and "variant float32 taken" in q.json()["variant_note"], q.text[:300]
        time.sleep(1.0)  # the other worker polls the revision every 0.2 s
        for _ in range(20):
            d = httpx.get(f"{base}/devices").json()["variants"]
            assert d["cpu-host"]["pytorch"] == ["float32", "bfloat16"] == d["edge-7"]["pytorch"], d
            q = httpx.get(f"{base}/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": 1000,
                                                   "variant": "bfloat16"}).json()
            assert q["variant"] == "bfloat16" and q["variant_note"] is None and "[bfloat16]" in q["message"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
