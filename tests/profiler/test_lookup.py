from __future__ import annotations

import time
from pathlib import Path

import pytest

from amoeba_core.errors import AmoebaError
from profiler.lookup import LatencyModel, latency_ms, list_devices, list_tables
from profiler.plan import make_plan, run_profile
from tests.profiler.conftest import FAST


def test_lists(measured_root: Path) -> None:
    assert list_devices(measured_root) == ["a5000", "cpu-host", "orin-nx-16gb"]
    [t] = list_tables(measured_root)
    assert (t.device, t.flow, t.model) == ("cpu-host", "pytorch", "tiny") and t.store.endswith("profiles/amoeba.db")


def test_sources_in_order(measured_root: Path) -> None:
    m = latency_ms("cpu-host", "pytorch", "tiny", 3, 0.5, root=measured_root)
    assert m.source == "measured" and m.ms == m.measured_ms and m.predicted_ms and m.roofline_ms
    assert 0 < m.roofline_ms < m.ms
    p = latency_ms("cpu-host", "pytorch", "tiny", 3, 0.75, phase="prefill", root=measured_root)
    assert p.source == "predicted" and p.measured_ms is None and p.ms == p.predicted_ms
    r = latency_ms("a5000", "tensorrt_llm", "llama2-7b", 32, 1.0, root=measured_root)
    assert r.source == "roofline" and r.ms == r.roofline_ms and r.measured_ms is None and r.predicted_ms is None


def test_unknown_names_list_the_known(measured_root: Path) -> None:
    with pytest.raises(AmoebaError, match="known: a5000, cpu-host, orin-nx-16gb"):
        latency_ms("nope", "pytorch", "tiny", 1, 1.0, root=measured_root)
    with pytest.raises(AmoebaError, match="known on cpu-host: pytorch/tiny"):
        latency_ms("cpu-host", "pytorch", "smollm2-135m", 1, 1.0, root=measured_root)
    with pytest.raises(AmoebaError, match="unknown flow"):
        LatencyModel.open("cpu-host", "nope", "tiny", root=measured_root)
    with pytest.raises(AmoebaError, match="depth 5 outside"):
        latency_ms("cpu-host", "pytorch", "tiny", 5, 1.0, root=measured_root)
    with pytest.raises(AmoebaError, match="prompt_len 999"):
        LatencyModel.open("cpu-host", "pytorch", "tiny", prompt_len=999, root=measured_root)


def test_latency_model_is_fast_for_many_queries(measured_root: Path) -> None:
    m = LatencyModel.open("cpu-host", "pytorch", "tiny", root=measured_root)
    t0 = time.perf_counter()
    for _ in range(5):
        for d in range(1, 5):
            for w in [i / 100 for i in range(20, 101)]:
                m.estimate(d, w)
    assert time.perf_counter() - t0 < 2.0  # 1,620 queries, mostly cached


def test_per_layer_mode_composes_and_is_labelled(root: Path) -> None:
    plan = make_plan(
        "cpu-host", "pytorch", "tiny", (3, 4), (1.0,), ("decode",), 16, "float32", 1, per_layer=True, measure_cfg=FAST
    )
    res = run_profile(plan, root)
    assert res.written == 3 and res.composed == 2  # depth 1, 2, 4 timed; depth 3, 4 composed
    est = latency_ms("cpu-host", "pytorch", "tiny", 3, 1.0, root=root)
    assert est.source == "per-layer" and est.measured_ms is None
    assert latency_ms("cpu-host", "pytorch", "tiny", 4, 1.0, root=root).source == "measured"
    again = run_profile(plan, root)
    assert again.written == 0 and again.skipped == 3 and again.composed == 0


def test_roofline_of_a_variant_named_by_its_budget(root: Path) -> None:
    """tvm's rows are variant 'tuned-32'; the floor takes the dtype from the table's environment."""
    from amoeba_core.shape import ModelGeometry
    from profiler.table import LatencyTable, now_utc, row_key

    t = LatencyTable("cpu-host", "tvm", "tiny", root)
    t.write_header({"geometry": ModelGeometry.preset("tiny").to_dict(), "dtype": "float32"},
                   environment={"dtype": "float32"}, variant="tuned-32")
    for d in (1, 2):
        t.append({**row_key("tuned-32", d, 1.0, "decode", 1, 32, "measured"), "p50_ms": float(d), "p10_ms": 0.9 * d,
                  "p90_ms": 1.1 * d, "n": 5, "discarded": 0, "samples_ms": [float(d)] * 5, "created": now_utc()})
    m = LatencyModel.open("cpu-host", "tvm", "tiny", "decode", 32, "tuned-32", root)
    assert m.weight_dtype == "float32"
    est = m.estimate(2, 1.0)
    assert est.source == "measured" and est.roofline_ms is not None and est.roofline_ms > 0
