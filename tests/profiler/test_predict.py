from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.plan import make_plan, run_profile
from profiler.predict import LatencyPredictor, fit_line, sparse_depths
from profiler.table import LatencyTable
from tests.profiler.conftest import FAST, SMALL


def _synthetic(widths: dict[float, tuple[float, float]], depths: list[int]) -> pd.DataFrame:
    """Exact linear latencies (stand-in numbers: this checks the arithmetic, not timing)."""
    rows = [{"depth": d, "width": w, "p50_ms": f + d * s} for w, (f, s) in widths.items() for d in depths]
    return pd.DataFrame(rows)


def test_exact_lines_are_recovered_and_interpolated_in_layer_size() -> None:
    g = ModelGeometry.preset("smollm2-135m")
    rows = _synthetic({1.0: (5.0, 2.0), 0.625: (5.0, 1.0)}, [6, 30])
    p = LatencyPredictor.fit(rows, g)
    assert p.predict(18, 1.0) == pytest.approx(5 + 36)
    # 0.75 sits between 0.625 and 1 in one-layer parameter count, not necessarily in width
    x = [g.scaled_dims(1, w).layer_params() for w in (0.625, 0.75, 1.0)]
    frac = (x[1] - x[0]) / (x[2] - x[0])
    assert p.predict(10, 0.75) == pytest.approx(5 + 10 * (1 + frac))
    assert not p.extrapolated(0.75) and p.extrapolated(0.5)
    assert p.predict(10, 0.5) < p.predict(10, 0.625)  # extrapolated downwards, flagged above


def test_holdout_and_self_check_report_errors() -> None:
    rows = _synthetic({1.0: (3.0, 1.5)}, [2, 4, 6, 8])
    p = LatencyPredictor.fit(rows[rows.depth.isin([2, 8])])
    err = p.holdout_errors(rows[rows.depth.isin([4, 6])])
    assert np.allclose(err.rel_error, 0.0)
    bumped = rows.copy()
    bumped.loc[bumped.depth == 6, "p50_ms"] *= 1.2
    chk = LatencyPredictor.fit(bumped).self_check(bumped)
    assert chk["n"] == 4 and chk["max_abs_error"] > 0.1 and chk["within_5pct"] < 1.0


def test_needs_two_depths() -> None:
    with pytest.raises(AmoebaError, match="two measured depths"):
        LatencyPredictor.fit(_synthetic({1.0: (1.0, 1.0)}, [4]))
    with pytest.raises(AmoebaError):
        fit_line([3, 3], [1.0, 2.0])


def test_sparse_plan_depths() -> None:
    assert sparse_depths([6, 12, 18, 24, 30]) == (6, 18, 30)
    assert sparse_depths([4, 8]) == (4, 8)


def test_predictor_on_real_measurements(root: Path) -> None:
    """Fit on depths 1 and 6 of real prefill timings, predict the held-out depths 2-5."""
    import yaml

    gpath = root / "small.json"
    from amoeba_core.model import llama_config

    gpath.parent.mkdir(exist_ok=True)
    folder = root / "small-model"
    folder.mkdir()
    (folder / "config.json").write_text(__import__("json").dumps(llama_config(SMALL).to_dict()))
    plan = make_plan(
        "cpu-host", "pytorch", str(folder), (1, 2, 3, 4, 5, 6), (1.0,), ("prefill",), 64, "float32", 1, measure_cfg=FAST
    )
    run_profile(plan, root)
    df = LatencyTable("cpu-host", "pytorch", plan.model, root).df
    assert len(df) == 6 and yaml.safe_dump(plan.geometry.to_dict())
    p = LatencyPredictor.fit(df[df.depth.isin([1, 6])], plan.geometry)
    fixed, per_layer = p.coefficients(1.0)
    assert per_layer > 0
    err = p.holdout_errors(df[df.depth.isin([2, 3, 4, 5])])
    # real timings on a shared machine: generous, but a wrong model (e.g. no per-layer term) fails it
    assert err.rel_error.abs().median() < 0.25, err


def test_plans_measure_what_they_say() -> None:
    full = make_plan(
        "cpu-host",
        "pytorch",
        "smollm2-135m",
        (6, 12, 18, 24, 30),
        (1.0, 0.75),
        ("prefill", "decode"),
        128,
        "float32",
        2,
    )
    assert len(full.points()) == 5 * 2 * 2
    assert [p[1] for p in full.points()[:4]] == [30, 30, 24, 24]  # deepest first: weights are reused
    sparse = make_plan(
        "cpu-host",
        "pytorch",
        "smollm2-135m",
        (6, 12, 18, 24, 30),
        (1.0, 0.75),
        ("decode",),
        128,
        "float32",
        2,
        sparse=True,
    )
    assert {p[1] for p in sparse.points()} == {6, 18, 30} and len(sparse.points()) == 6
    per_layer = make_plan(
        "cpu-host", "pytorch", "llama2-7b", (32,), (1.0,), ("decode",), 128, "float32", 2, per_layer=True
    )
    assert {p[1] for p in per_layer.points()} == {1, 2, 4}
    with pytest.raises(AmoebaError, match="alternatives"):
        make_plan(
            "cpu-host", "pytorch", "tiny", (2,), (1.0,), ("decode",), 16, "float32", 1, sparse=True, per_layer=True
        )


def test_rounds_interleave_shapes_and_pool_their_samples(root: Path) -> None:
    """rounds=2: every block of shapes is timed against the reference once per round, and a row
    holds the pairs of both rounds; blocks respect the shape cap (sample-level order: test_paired)."""
    from profiler.plan import BLOCK_SHAPES, run_profile
    from profiler.table import LatencyTable

    cfg = dataclasses.replace(FAST, rounds=2)
    assert cfg.per_round().max_seconds == FAST.max_seconds / 2 and cfg.per_round().rounds == 1
    assert BLOCK_SHAPES == 4
    plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode",), 16, "float32", 1,
                     measure_cfg=cfg)
    seen: list[tuple[str, int, int]] = []
    res = run_profile(plan, root, progress=lambda desc, done, total: seen.append((desc, done, total)))
    assert res.written == 8
    blocks = ["[d3-w1.000, d2-w1.000, d1-w1.000, d4-w0.500]", "[d3-w0.500, d2-w0.500, d1-w0.500]"]
    assert [d for d, _, _ in seen] == [f"decode round {r}/2 {b} vs d4-w1.000" for b in blocks for r in (1, 2)]
    assert seen[-1][1] == seen[-1][2] == 16  # 8 rows x 2 rounds, the reference's row included
    rows = LatencyTable("cpu-host", "pytorch", "tiny", root).rows(phase="decode")
    per_round = cfg.per_round()
    assert (rows["n"] >= 2 * per_round.min_repeats).all()
    assert (rows["samples_ms"].map(len) == rows["n"]).all()
    with pytest.raises(ValueError, match="rounds"):
        dataclasses.replace(FAST, rounds=0)


def test_min_seconds_keeps_a_fast_row_sampling() -> None:
    import time

    from profiler.measure import MeasureConfig, measure

    def fast() -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.001:
            pass
        return time.perf_counter() - t0

    cfg = MeasureConfig(warmup=0, min_repeats=3, max_repeats=5, max_seconds=1.0, rel_ci=0.5, rounds=1, min_seconds=0)
    assert measure(fast, cfg).n <= 5
    s = measure(fast, dataclasses.replace(cfg, min_seconds=0.1))
    assert s.n > 5 and sum(s.samples_ms) >= 100.0  # past max_repeats (n depends on the host's load)
    with pytest.raises(ValueError, match="min_seconds"):
        dataclasses.replace(cfg, min_seconds=2.0)


def test_estimates_carry_an_interval_and_an_extrapolation_flag() -> None:
    """Exact lines: the interval is the rows' own ±2%; an unmeasured width adds the measured
    interpolation error, a bumped row the fit's residuals, leaving the measured range the flag."""
    g = ModelGeometry.preset("smollm2-135m")
    rows = _synthetic({1.0: (5.0, 2.0), 0.75: (4.0, 1.5), 0.625: (4.0, 1.2)}, [6, 18, 30])
    rows["ms"] = rows["p50_ms"]
    rows["ms_lo"], rows["ms_hi"] = rows["ms"] * 0.98, rows["ms"] * 1.02
    p = LatencyPredictor.fit(rows, g)
    e = p.estimate(12, 1.0)
    assert e.ms == pytest.approx(5 + 24) and not e.extrapolated
    assert e.hi_ms == pytest.approx(e.ms * 1.02) and e.lo_ms == pytest.approx(e.ms / 1.02)
    mid = p.estimate(12, 0.875)  # between measured widths: not extrapolated, wider (interpolation error)
    assert not mid.extrapolated and (mid.hi_ms - mid.lo_ms) / mid.ms > (e.hi_ms - e.lo_ms) / e.ms
    for d, w in ((3, 1.0), (18, 0.5)):  # shallower than measured; narrower than measured
        out = p.estimate(d, w)
        assert out.extrapolated and (out.hi_ms - out.lo_ms) / out.ms > 2 * 0.02 * 1.01
    bumped = rows.copy()
    bumped.loc[bumped.depth == 18, "ms"] *= 1.1
    noisy = LatencyPredictor.fit(bumped, g).estimate(12, 1.0)
    assert (noisy.hi_ms - noisy.lo_ms) / noisy.ms > 2 * (e.hi_ms - e.lo_ms) / e.ms
    err = p.holdout_errors(rows)
    assert err["in_interval"].all() and not err["extrapolated"].any()


def test_depth_line_never_goes_negative() -> None:
    """Noisy shallow rows that tilt a free line below zero: the fit keeps t0 >= 0 and slope >= 0."""
    from profiler.predict import fit_line

    t0, slope = fit_line([2, 3, 4], [0.10, 0.55, 1.00])  # free fit: t0 = -0.8
    assert t0 >= 0 and slope > 0 and t0 + slope > 0
    t0, slope = fit_line([1, 2, 4], [1.0, 0.9, 0.8])  # free fit: negative slope
    assert slope == 0 and abs(t0 - 0.9) < 1e-9
