"""`--json` on `amoeba query | search | predict | table show`: a real CLI in a subprocess, piped into
`python -c "import json,sys; json.load(sys.stdin)"` as a deployment script would read it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from search.service import FrontOut, QueryOut
from tests.docs.conftest import env_with

AMOEBA = [sys.executable, "-m", "amoeba.cli"]
LOAD = [sys.executable, "-c", "import json,sys; json.load(sys.stdin)"]


def _amoeba(args: list[str], profiles: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AMOEBA, *args], capture_output=True, text=True, env=env_with(profiles), timeout=300)


def test_query_json_pipes_into_json_load(run_dir: Path, profiles: Path) -> None:
    cmd = (f"{' '.join(AMOEBA)} query --run {run_dir} --device cpu-host --flow pytorch --budget 100% --json"
           f" | {sys.executable} -c 'import json,sys; json.load(sys.stdin)'")
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         env=env_with(profiles), timeout=300)
    assert res.returncode == 0, res.stderr
    out = _amoeba(["query", "--run", str(run_dir), "--device", "cpu-host", "--flow", "pytorch", "--budget", "100%",
                   "--json"], profiles)
    assert out.returncode == 0, out.stderr
    ans = QueryOut.model_validate_json(out.stdout)  # the service's model: the same fields
    assert ans.feasible and ans.shape is not None and ans.shape.latency_ms <= ans.budget_ms
    assert set(json.loads(out.stdout)) == set(QueryOut.model_fields)


def test_query_json_infeasible_still_json_exit_1(run_dir: Path, profiles: Path) -> None:
    out = _amoeba(["query", "--run", str(run_dir), "--device", "cpu-host", "--flow", "pytorch", "--budget",
                   "0.000001ms", "--json"], profiles)
    assert out.returncode == 1
    ans = QueryOut.model_validate_json(out.stdout)
    assert not ans.feasible and ans.shape is None and ans.fastest.latency_ms > 0


def test_search_json_is_the_front(run_dir: Path, profiles: Path, strategy_path: Path) -> None:
    # the shapes are stored in run_dir's accuracy table: this search re-scores nothing
    out = _amoeba(["search", "--strategy", str(strategy_path), "--device", "cpu-host", "--flow", "pytorch",
                   "--method", "random", "--trials", "4", "--run", str(run_dir), "--widths", "1,0.5",
                   "--max-windows", "2", "--seq-len", "32", "--json"], profiles)
    assert out.returncode == 0, out.stderr
    front = FrontOut.model_validate_json(out.stdout)
    assert front.front and front.n_evaluated >= len(front.front)
    lat = [p.latency_ms for p in front.front]
    assert lat == sorted(lat)
    assert "front of" in out.stderr  # the human table moved to stderr


def test_predict_and_table_show_json(profiles: Path) -> None:
    out = _amoeba(["predict", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--shape", "d3-w0.75",
                   "--json"], profiles)
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert p["ms"] > 0 and p["source"] and p["shape"].startswith("d3")
    out = _amoeba(["table", "show", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--json"],
                  profiles)
    assert out.returncode == 0, out.stderr
    t = json.loads(out.stdout)
    assert t["n_rows"] == 8 and len(t["rows"]) == 8
    assert all(r["ms"] > 0 and r["source"] for r in t["rows"])


def test_cli_json_equals_the_service_answer(run_dir: Path, profiles: Path, tmp_path: Path) -> None:
    """The same budget asked of `amoeba query --json`/`amoeba search --json` and of a real `amoeba serve`
    on 127.0.0.1 gives the same JSON objects."""
    import shutil
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from search.service import create_app

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)  # the service keeps its database in the run folder
    out = _amoeba(["query", "--run", str(run), "--device", "cpu-host", "--flow", "pytorch", "--budget", "100%",
                   "--json"], profiles)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run, profiles), host="127.0.0.1", port=port,
                                           log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            served = c.get("/query", params={"device": "cpu-host", "flow": "pytorch",
                                             "budget_ms": cli["budget_ms"]}).json()
            front = c.get("/fronts/cpu-host/pytorch").json()
    finally:
        server.should_exit = True
        th.join(10)
    _assert_close(served, cli)  # the service refits the predictor on its database's copy: 1e-12 apart
    from search.json_out import front_json

    _assert_close(front, json.loads(front_json(run, profiles, "cpu-host", "pytorch")))


def _assert_close(a: object, b: object, path: str = "") -> None:
    """Equal JSON values, floats to a relative 1e-9."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), path
        assert abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-12), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
