"""Few-shot transferred tables (profiler/transfer.py): the model, the CLI, and the label end to end.

The end-to-end test times the `tiny` geometry for real on a second device folder (``dev-b``, a
copy of this machine's spec) at 1 and 2 threads, then asks `amoeba profile --few-shot 3` for
cpu-host, where no table exists, and follows the transferred rows through the table, `amoeba
predict`, the query index and the HTTP service.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from profiler.transfer import Line, LineKey, TransferModel, calibrate_z
from tests.profiler.conftest import FAST, cli_env
from tests.search.test_service import _serve

DEPTHS, WIDTHS = (6, 12, 18, 24, 30), (1.0, 0.875, 0.75, 0.625)
FEW = ["profile", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--depths", "1,2,3,4",
       "--widths", "1,0.5", "--phases", "decode", "--prompt-len", "16", "--threads", "1", "--repeats", "3", "--rounds", "1"]


def _line(i: int, level: float, fixed: float, exponent: float, rng: np.random.Generator, noise: float) -> Line:
    ms = {(d, w): level * (fixed + d * w**exponent) * math.exp(rng.normal(0, noise)) for d in DEPTHS for w in WIDTHS}
    return Line(LineKey("dev", "flow", "m", f"v{i}", 1, "decode", 128), ms)


def test_model_transfers_lines_of_the_same_family() -> None:
    """Lines that differ in level, fixed cost and width scaling: 3 measurements recover the rest."""
    rng = np.random.default_rng(0)
    lines = [_line(i, rng.uniform(1, 10), rng.uniform(2, 20), rng.uniform(0.8, 2.0), rng, 0.01) for i in range(8)]
    new = _line(99, 3.0, 7.0, 1.4, rng, 0.01)
    model = TransferModel.fit(lines)
    assert 1 <= model.rank <= len(lines) - 1
    chosen = model.choose(3, [(30, 1.0)])
    assert chosen[0] == (30, 1.0) and len(set(chosen)) == 3
    z, n = calibrate_z(lines, 3, first=[(30, 1.0)])
    assert n == len(lines) * (len(DEPTHS) * len(WIDTHS) - 3) and z > 0
    rows = model.transfer({s: new.ms[s] for s in chosen}, z)
    assert len(rows) == len(DEPTHS) * len(WIDTHS) - 3
    err = np.array([abs(t.ms / new.ms[(t.depth, t.width)] - 1) for t in rows])
    assert np.median(err) < 0.03 and err.max() < 0.10
    assert all(t.lo_ms < t.ms < t.hi_ms for t in rows)
    # one measurement fixes the level only: far worse than three
    one = model.transfer({(30, 1.0): new.ms[(30, 1.0)]})
    err1 = np.array([abs(t.ms / new.ms[(t.depth, t.width)] - 1) for t in one])
    assert np.median(err1) > np.median(err)


def _run(root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amoeba", *args], env=cli_env(root), capture_output=True, text=True,
                          timeout=timeout)


def _cli(root: Path, *args: str) -> str:
    """The real `amoeba` CLI in this process (no interpreter start-up per call); returns stdout."""
    from typer.testing import CliRunner

    from amoeba.cli import app

    res = CliRunner().invoke(app, [*args, "--root", str(root)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_few_shot_without_another_line_says_what_to_profile(root: Path) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    r = _run(root, *FEW, "--few-shot", "3")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --few-shot needs another line of tiny"), r.stderr
    assert "profile one first" in lines[0] and "amoeba profile --device cpu-host" in lines[0]
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == before  # nothing written
    r = _run(root, *FEW, "--few-shot", "0")
    assert r.returncode == 2 and "K >= 1" in r.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == before


@pytest.fixture(scope="module")
def two_lines(host_spec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with a second device folder holding real PyTorch `tiny` tables at 1 and 2 threads."""
    from profiler.plan import make_plan, run_profile

    r = tmp_path_factory.mktemp("transfer") / "profiles"
    shutil.copytree(host_spec_dir, r)
    (r / "dev-b").mkdir()
    spec = yaml.safe_load((r / "cpu-host" / "device.yaml").read_text())
    spec.update(name="dev-b", description="test copy of this machine's spec (a second device folder)")
    (r / "dev-b" / "device.yaml").write_text(yaml.safe_dump(spec))
    for threads in (1, 2):
        plan = make_plan("dev-b", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode",), 16,
                         "float32", threads, measure_cfg=FAST)
        assert run_profile(plan, r).written == 8
    return r


def test_transferred_table_is_labelled_end_to_end(two_lines: Path, tmp_path: Path) -> None:
    import httpx

    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy
    from profiler.lookup import LatencyModel
    from profiler.table import LatencyTable
    from search.query import QueryIndex

    root = tmp_path / "profiles"
    shutil.copytree(two_lines, root)
    out = _cli(root, *FEW, "--few-shot", "3")
    assert "transferred from 2 lines" in out, out

    # the table: 3 measured shapes (the paired reference among them), the other 5 transferred
    tab = LatencyTable("cpu-host", "pytorch", "tiny", root)
    meas, tr = tab.rows(source="measured"), tab.rows(source="transferred")
    assert len(meas) == 3 and len(tr) == 5 and ((meas.depth == 4) & (meas.width == 1.0)).any()
    assert (tr.n == 0).all() and (tr.p10_ms < tr.p50_ms).all() and (tr.p50_ms < tr.p90_ms).all()
    assert set(zip(meas.depth, meas.width)).isdisjoint(zip(tr.depth, tr.width))
    assert (tr.protocol == "paired-v1").all() and (tr.threads == 1).all()  # derived from paired rows
    info = tab.header["transfers"]
    assert list(info) == ["float32/decode/p16/b1/t1"]
    assert all(len(v["references"]) == 2 and v["interval_level"] == 0.9 for v in info.values())

    # lookup: measured shapes answer measured, the others transferred, with an interval
    m = LatencyModel.open("cpu-host", "pytorch", "tiny", "decode", 16, root=root, threads=1)
    shape = (int(tr.depth.iloc[0]), float(tr.width.iloc[0]))
    est = m.estimate(*shape)
    assert est.source == "transferred" and est.measured_ms is None
    assert est.lo_ms is not None and est.lo_ms < est.ms < est.hi_ms
    assert m.estimate(4, 1.0).source == "measured"
    off = m.estimate(2, 0.75)  # off the grid: the predictor of measured + transferred rows
    assert off.source == "transferred" and off.lo_ms < off.ms < off.hi_ms

    # `amoeba predict` says so
    out = _cli(root, "predict", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--shape",
               f"d{shape[0]}-w{shape[1]}", "--prompt-len", "16")
    assert "(transferred)" in out and "interval" in out, out

    # query index and HTTP service of a run searched on dev-b, asked about cpu-host
    strategy = tmp_path / "strategy.yaml"
    g = load_model("tiny")
    Strategy.trivial(g.geometry, g.fingerprint, "tiny", widths=(1.0, 0.5)).save(strategy)
    run = tmp_path / "run"
    _cli(root, "search", "--strategy", str(strategy), "--device", "dev-b", "--flow", "pytorch", "--method",
         "random", "--trials", "12", "--run", str(run), "--widths", "0.5:1:0.5", "--max-windows", "1", "--seq-len",
         "32", "--prompt-len", "16")
    pts = QueryIndex(run, root).points("cpu-host", "pytorch")
    by_src = {p.latency_source for p in pts}
    assert "transferred" in by_src and by_src <= {"measured", "transferred"}
    t = next(p for p in pts if p.latency_source == "transferred")
    assert t.lo_ms is not None and t.lo_ms < t.latency_ms < t.hi_ms
    gen = _serve(run, root, None)
    url = next(gen)
    try:
        front = httpx.get(f"{url}/fronts/cpu-host/pytorch", timeout=30).json()["front"]
        srcs = {p["latency_source"] for p in front}
        assert srcs <= {"measured", "transferred"}
        shown = [p for p in front if p["latency_source"] == "transferred"]
        assert all(p["lo_ms"] is not None and p["lo_ms"] < p["latency_ms"] < p["hi_ms"] for p in shown)
        slowest = max(p.latency_ms for p in pts)
        ans = httpx.get(f"{url}/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": slowest * 2},
                        timeout=30).json()
        assert ans["feasible"] and ans["shape"]["latency_source"] in ("measured", "transferred")
    finally:
        next(gen, None)

    # a later measurement replaces the transferred answer of its shape
    d, w = shape
    _cli(root, "profile", "--device", "cpu-host", "--flow", "pytorch", "--model", "tiny", "--depths", str(d),
         "--widths", str(w), "--phases", "decode", "--prompt-len", "16", "--threads", "1", "--repeats", "3", "--rounds", "1")
    m = LatencyModel.open("cpu-host", "pytorch", "tiny", "decode", 16, root=root, threads=1)
    assert m.estimate(d, w).source == "measured"
