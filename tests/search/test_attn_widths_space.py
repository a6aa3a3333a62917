"""Search space with attention width as its own axis (depth x attention width x MLP width)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape, WidthAxes
from search.evolutionary import run_optuna
from search.hierarchical import run_hierarchical
from search.objectives import AccuracyObjective, AccuracyTable
from search.latency import LatencyObjective
from search.problem import SearchProblem
from search.query import _grid, _point, _record_width
from search.space import SearchSpace


def test_space_with_attention_axis(strategy_path: Path) -> None:
    one = SearchSpace.from_strategy(strategy_path, widths=(1.0, 0.5))
    sep = SearchSpace.from_strategy(strategy_path, widths=(1.0, 0.5), attn_widths=(1.0, 0.5))
    assert one.width_axis == (0.5, 1.0) and one.size == 8 and "attn_widths" not in one.to_dict()
    assert sep.width_axis == (WidthAxes(0.5, 0.5), WidthAxes(1.0, 0.5), WidthAxes(0.5, 1.0), WidthAxes(1.0, 1.0))
    assert sep.size == 16 and len({s.key for s in sep.shapes()}) == 16
    assert sep.shape(3, WidthAxes(0.5, 1.0)) == SubnetShape((0, 1, 2), 1.0, 0.5) == sep.shape(3, 1.0, 0.5)
    assert SearchSpace.from_dict(sep.to_dict()).shapes() == sep.shapes()
    with pytest.raises(AmoebaError, match="attention width 0.75"):
        SearchSpace.from_strategy(strategy_path, widths=(1.0,), attn_widths=(0.75,))


def test_search_over_attention_and_mlp_widths(strategy_path: Path, profiles: Path, tmp_path: Path) -> None:
    sep = SearchSpace.from_strategy(strategy_path, widths=(1.0, 0.5), attn_widths=(1.0, 0.5))
    lat = LatencyObjective("cpu-host", "pytorch", "tiny", root=profiles)
    # a0.5-m0.5 is the table's measured w0.5 network (2 of 4 heads, 64 channels): same coordinate
    assert lat.at(4, WidthAxes(0.5, 0.5)).ms == pytest.approx(lat.at(4, 0.5).ms)
    assert lat(sep.shape(4, 1.0, 0.5)).ms != lat(sep.shape(4, 0.5, 1.0)).ms  # other networks, other latencies
    acc = AccuracyObjective.from_stage1(strategy_path, AccuracyTable(tmp_path / "a.parquet"), max_windows=2, seq_len=32)
    p = SearchProblem(sep, acc, lat)
    study = run_optuna(p, "nsga2", n_trials=8, seed=1, population_size=4)
    assert len(study.trials) == 8
    for t in study.trials:
        shape = p.shape_of(t.params)
        assert t.user_attrs["shape"] == shape.key and p.params_of(shape) == t.params
        assert t.user_attrs.get("attn_width") == shape.attn_width
    p2 = SearchProblem(sep, acc, lat)
    run_hierarchical(p2, max_evaluations=6)
    assert p2.history and all(e.shape.attn_width is not None for e in p2.history)
    # records of separate shapes are looked up with their attention width, and print as such
    rec = acc(sep.shape(3, 1.0, 0.5))
    assert _record_width(rec) == WidthAxes(0.5, 1.0)
    pt = _point(rec, lat.at(3, _record_width(rec)))
    assert _grid(pt) == "d3-a0.500-m1.000"


def test_cli_search_and_query_with_attention_axis(strategy_path: Path, profiles: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from amoeba.cli import app

    run = tmp_path / "sep"
    res = CliRunner().invoke(app, ["search", "--strategy", str(strategy_path), "--device", "cpu-host", "--flow",
                                   "pytorch", "--method", "random", "--trials", "16", "--run", str(run),
                                   "--widths", "1,0.5", "--attn-widths", "1,0.5", "--max-windows", "2",
                                   "--seq-len", "32", "--root", str(profiles)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "-a0.500-m" in res.output or "-a1.000-m" in res.output
    res = CliRunner().invoke(app, ["query", "--run", str(run), "--root", str(profiles), "--device", "cpu-host",
                                   "--flow", "pytorch", "--budget", "1000ms"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "amoeba export --strategy" in res.output and "-m" in res.output.split("--shape", 1)[1].split()[0]
    bad = CliRunner().invoke(app, ["search", "--strategy", str(strategy_path), "--run", str(tmp_path / "x"),
                                   "--attn-widths", "0.75", "--root", str(profiles)])
    assert bad.exit_code != 0 and "attention width 0.75" in bad.output + str(bad.exception)
    assert not (tmp_path / "x").exists()


def test_hierarchical_reaches_the_front_over_attention_and_mlp_widths() -> None:
    """The width index of a two-axis space has no accuracy order (d, a0.25, m1 is worse than d, a1, m0.75
    here); the search bounds a shape by the evaluated shapes at least as deep and as wide on both axes,
    so it still reaches 99% of the exhaustive front's hypervolume after a third of the space at most."""
    import numpy as np

    from search.pareto import hypervolume
    from search.space import fine_widths

    depths = range(17, 33)
    space = SearchSpace("llama2-7b", tuple(depths), fine_widths(0.5, 1.0, 1 / 8), {d: tuple(range(d)) for d in depths},
                        attn_widths=(0.25, 0.5, 0.75, 1.0))
    root = Path(__file__).resolve().parents[2] / "device_profiles"
    lat = LatencyObjective("a5000", "pytorch", "llama2-7b", root=root)

    def acc(s: SubnetShape) -> float:  # smooth, monotone in depth and both widths; attention matters more
        return float(1 - np.exp(-s.depth * 0.15) * (1.3 - s.attn_width) ** 0.8 * (1.2 - s.width) ** 0.3)

    shapes = space.shapes()
    assert acc(space.shape(24, 1.0, 0.25)) < acc(space.shape(24, 0.75, 1.0))  # index order is not accuracy order
    ref = (max(lat(s).ms for s in shapes) * 1.01, min(acc(s) for s in shapes))
    full = hypervolume([lat(s).ms for s in shapes], [acc(s) for s in shapes], *ref)
    p = SearchProblem(space, acc, lat)
    run_hierarchical(p, tol=0.0)
    hv = [hypervolume([e.latency_ms for e in p.history[:k]], [e.accuracy for e in p.history[:k]], *ref)
          for k in range(1, len(p.history) + 1)]
    assert hv[-1] >= 0.99 * full
    needed = next(k for k, h in enumerate(hv, 1) if h >= 0.99 * full)
    assert needed <= space.size // 3, (needed, space.size)  # 77 of 320 when written
