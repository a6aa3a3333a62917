from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from amoeba_core.errors import AmoebaError
from search.query import QueryIndex


def test_query_is_exact(run_dir: Path, profiles: Path) -> None:
    ix = QueryIndex(run_dir, profiles)
    pts = ix.points("cpu-host", "pytorch")
    assert len(pts) >= 10
    lats = sorted(p.latency_ms for p in pts)
    budgets = list(np.linspace(lats[0], lats[-1] * 1.1, 50)) + lats
    for b in budgets:
        a = ix.best("cpu-host", "pytorch", b)
        fit = [p for p in pts if p.latency_ms <= b]
        assert a.feasible and a.shape is not None
        best = max(p.accuracy for p in fit)
        assert a.shape.accuracy == best and a.shape.latency_ms <= b
        assert a.shape.latency_ms == min(p.latency_ms for p in fit if p.accuracy == best)
        assert a.export_command and f"d{a.shape.depth}-w{a.shape.width:.3f}" in a.export_command


def test_infeasible_budget_names_the_fastest(run_dir: Path, profiles: Path) -> None:
    ix = QueryIndex(run_dir, profiles)
    fastest = min(ix.points("cpu-host", "pytorch"), key=lambda p: p.latency_ms)
    a = ix.best("cpu-host", "pytorch", fastest.latency_ms * 0.5)
    assert not a.feasible and a.shape is None and a.fastest == fastest
    assert f"{fastest.latency_ms:.3f} ms" in a.message


def test_unknown_names_list_the_known(run_dir: Path, profiles: Path) -> None:
    ix = QueryIndex(run_dir, profiles)
    with pytest.raises(AmoebaError, match="unknown device 'nope'.*known: cpu-host"):
        ix.best("nope", "pytorch", 10)
    with pytest.raises(AmoebaError, match="unknown flow 'llamacpp'.*known: pytorch"):
        ix.best("cpu-host", "llamacpp", 10)
    with pytest.raises(AmoebaError, match="phase"):
        ix.best("cpu-host", "pytorch", 10, phase="train")
    with pytest.raises(AmoebaError, match="budget"):
        ix.best("cpu-host", "pytorch", float("nan"))


def test_phases_and_front(run_dir: Path, profiles: Path) -> None:
    ix = QueryIndex(run_dir, profiles)
    dec, pre = ix.front("cpu-host", "pytorch", "decode"), ix.front("cpu-host", "pytorch", "prefill")
    e2e = ix.front("cpu-host", "pytorch", "e2e")
    for f in (dec, pre, e2e):
        assert [p.latency_ms for p in f] == sorted(p.latency_ms for p in f)
        assert all(a.accuracy < b.accuracy for a, b in zip(f, f[1:]))


def test_queries_take_microseconds(run_dir: Path, profiles: Path) -> None:
    ix = QueryIndex(run_dir, profiles)
    ix.best("cpu-host", "pytorch", 1.0)  # builds the index
    ts = []
    for b in np.linspace(0.1, 5, 2000):
        t0 = time.perf_counter()
        ix.best("cpu-host", "pytorch", float(b))
        ts.append(time.perf_counter() - t0)
    assert np.percentile(ts, 99) < 5e-3


def test_answers_say_which_model_the_accuracies_are_of(run_dir: Path, profiles: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    from search.json_out import query_json

    ix = QueryIndex(run_dir, profiles)
    budget = max(p.latency_ms for p in ix.points("cpu-host", "pytorch"))
    a = ix.best("cpu-host", "pytorch", budget)
    assert (a.weights, a.adapters) == ("stage1", None) and "Stage 1 model" in a.message
    assert "--adapters" not in (a.export_command or "")
    tuned = tmp_path / "tuned"
    shutil.copytree(run_dir, tuned)
    meta = yaml.safe_load((tuned / "search.yaml").read_text())
    meta["adapters"] = "runs/stage2"
    (tuned / "search.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    b = QueryIndex(tuned, profiles).best("cpu-host", "pytorch", budget)
    assert (b.weights, b.adapters) == ("stage2", "runs/stage2") and "Stage 2 fine-tuned model" in b.message
    assert "--adapters runs/stage2" in (b.export_command or "")
    import json

    assert json.loads(query_json(b))["weights"] == "stage2"
