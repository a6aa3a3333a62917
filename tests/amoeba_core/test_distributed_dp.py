"""Stage 1 across processes: 2 gloo ranks under torchrun share the DP's candidates and reach the DP of one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.amoeba_core._dp_worker import run

WORKER = Path(__file__).with_name("_dp_worker.py")


def test_two_ranks_split_the_candidates_and_agree_with_one(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           "--out", str(tmp_path / "dp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run(str(tmp_path / "one"))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "dp" / f"rank{i}.json").read_text()) for i in (0, 1)]
    for got in ranks:
        assert got["world"] == 2
        assert got["layers"] == one["layers"] and got["refined"] == one["refined"]
        for d, v in one["scores"].items():
            assert math.isclose(got["scores"][d], v, rel_tol=1e-5)
    # the work was shared: each rank evaluated well under what one process did, together about as much
    ev = [g["evaluated"] for g in ranks]
    assert max(ev) < 0.75 * one["evaluated"] and sum(ev) >= one["evaluated"]
    # rank 0 alone kept the score cache, with every shape once: a rerun of one process evaluates nothing
    keys = [json.loads(line)["key"] for line in (tmp_path / "dp" / "dp.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) and len(keys) >= one["evaluated"] - 1
    run(str(tmp_path / "dp"))
    assert json.loads((tmp_path / "dp" / "rank0.json").read_text())["evaluated"] == 0
