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
