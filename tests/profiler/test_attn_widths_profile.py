"""Profiling separate attention/MLP widths: plan, table key (attn_width), old tables, lookup and predictor."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, WidthAxes, width_key
from profiler.lookup import LatencyModel
from profiler.plan import make_plan, run_profile
from profiler.store.legacy import legacy_paths
from profiler.table import LatencyTable, row_key
from tests.profiler.conftest import FAST


def test_plan_times_every_attention_mlp_pair_with_its_own_sizes(root: Path) -> None:
    plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 4), (1.0, 0.5), ("decode",), 16, "float32", 1,
                     sparse=True, measure_cfg=FAST, attn_widths=(1.0, 0.5))
    assert plan.width_points == [WidthAxes(1.0, 1.0), WidthAxes(1.0, 0.5), WidthAxes(0.5, 1.0), WidthAxes(0.5, 0.5)]
    res = run_profile(plan, root)
    assert res.written == 4 * 3 + 1  # every pair at 3 depths, and the reference d4-w1.000 (one ratio)
    tab = LatencyTable("cpu-host", "pytorch", "tiny", root)
    df = tab.df
    assert df["attn_width"].isna().sum() == 1 and set(df["attn_width"].dropna()) == {1.0, 0.5}
    assert tab.has(row_key(df.variant.iloc[0], 4, 0.5, "decode", 1, 16, "measured", 1, "paired-v1", attn_width=0.5))
    assert not tab.has(row_key(df.variant.iloc[0], 4, 0.5, "decode", 1, 16, "measured", 1, "paired-v1"))  # w0.5: not timed
    m = LatencyModel.open("cpu-host", "pytorch", "tiny", "decode", root=root)
    est = m.estimate(4, 1.0, 0.5)
    assert est.source == "measured" and est.ms > 0
    assert m.estimate(4, width_key(1.0, 0.5)) == est
    # a depth not timed: predicted from the pair's own depth line
    assert m.estimate(3, 0.5, 0.5).source == "predicted"
    assert set(m.predictor.to_dict()["widths"]) == {"a1.000-m1.000", "a1.000-m0.500", "a0.500-m1.000", "a0.500-m0.500"}
    # one-ratio w0.5 is the same network as a0.5-m0.5 on tiny (2 of 4 heads, 64 channels): its row answers
    assert m.estimate(4, 0.5).source == "measured" and m.estimate(4, 0.5).ms == m.estimate(4, 0.5, 0.5).ms
    assert m.predictor.predict(3, 0.5) == pytest.approx(m.predictor.predict(3, 0.5, 0.5))  # same coordinate
    assert m.estimate(4, 0.75).source == "predicted"  # 4 heads, 96 channels: no twin was timed
    # re-running skips every row (the key includes attn_width)
    assert run_profile(plan, root).written == 0


def test_attention_width_the_groups_cannot_realise_is_refused_before_writing(root: Path) -> None:
    with pytest.raises(AmoebaError, match="attention width 0.75 .* allowed: 1.000, 0.500, 0.250"):
        make_plan("cpu-host", "pytorch", "tiny", (1, 2), (1.0,), ("decode",), 16, "float32", 1, attn_widths=(0.75,))
    with pytest.raises(AmoebaError, match="--per-layer"):
        make_plan("cpu-host", "pytorch", "tiny", None, (1.0,), ("decode",), 16, "float32", 1, per_layer=True,
                  attn_widths=(0.5,))
    assert not LatencyTable("cpu-host", "pytorch", "tiny", root).exists


def test_old_tables_without_attn_width_read_as_one_ratio(tmp_path: Path) -> None:
    tab = LatencyTable("dev", "pytorch", "m", tmp_path)
    base = {"p50_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1, "n": 3, "samples_ms": [1.0, 0.9, 1.1]}
    assert tab.append({**row_key("float32", 4, 0.75, "decode", 1, 16), **base})
    old = tab.df.drop(columns=["attn_width"])
    parquet, _ = legacy_paths(tmp_path / "old", "dev", "pytorch", "m")
    parquet.parent.mkdir(parents=True)
    old.to_parquet(parquet, index=False)  # a file of the earlier format, written before the column existed
    again = LatencyTable("dev", "pytorch", "m", tmp_path / "old")
    assert math.isnan(float(again.df["attn_width"].iloc[0]))
    assert again.has(row_key("float32", 4, 0.75, "decode", 1, 16))
    # the separate shape of the same MLP width is another row, not a duplicate
    assert not again.has(row_key("float32", 4, 0.75, "decode", 1, 16, attn_width=0.667))
    assert again.append({**row_key("float32", 4, 0.75, "decode", 1, 16, attn_width=0.667), **base})
    assert len(again.df) == 2 and not again.append({**row_key("float32", 4, 0.75, "decode", 1, 16), **base})
    assert pd.isna(again.df["attn_width"]).sum() == 1


def test_scaled_dims_gives_profiling_models_both_widths() -> None:
    g = ModelGeometry.preset("smollm2-135m")
    a = g.scaled_dims(30, width_key(0.75, 1.0))
    b = g.scaled_dims(30, 0.75)
    assert (a.n_heads, a.intermediate, b.n_heads, b.intermediate) == (9, 1152, 6, 1152)
