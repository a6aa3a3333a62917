"""Multi-fidelity accuracy (rungs of windows, intervals, the table) and the multi-fidelity hierarchical search."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from amoeba_core.shape import SubnetShape
from search.hierarchical import run_hierarchical
from search.objectives import AccuracyTable, MultiFidelityAccuracy, spread_order
from search.latency import LatencyObjective
from search.pareto import hypervolume
from search.problem import SearchProblem
from search.space import SearchSpace, fine_widths

REPO = Path(__file__).resolve().parents[2]


def test_spread_order_is_a_nested_spread_permutation() -> None:
    o = spread_order(32)
    assert sorted(o) == list(range(32))
    assert o[:4] == [0, 16, 8, 24]
    assert sorted(spread_order(12)) == list(range(12)) and spread_order(1) == [0]


def test_rungs_on_the_tiny_model(strategy_path: Path, tmp_path: Path) -> None:
    from amoeba_core.evaluate import Evaluator
    from amoeba_core.strategy import Strategy

    table = AccuracyTable(tmp_path / "accuracy.parquet")
    mf = MultiFidelityAccuracy.from_stage1(strategy_path, table, seq_len=32, max_windows=8, rungs=(2, 8))
    shape = SubnetShape((0, 1, 2), 0.75)
    low = mf.score(shape, 0)
    assert low.windows == 2 and low.tokens == 64 and mf.tokens_run == 64
    assert low.top1_lo <= low.top1_acc <= low.top1_hi and low.ppl_lo <= low.ppl <= low.ppl_hi
    full = mf(shape)
    # Promotion runs only the 6 windows the first rung has not seen; the first rung's windows are a prefix.
    assert full.windows == 8 and full.tokens == 256 and mf.tokens_run == 256 and mf.n_evaluated == 2
    assert full.window_correct[:2] == low.window_correct and full.window_nll[:2] == pytest.approx(low.window_nll)
    assert mf(shape) == full and mf.n_evaluated == 2
    # The same windows through the plain Stage 1 evaluator give the same score.
    ids = mf.windows_tensor[mf.order]
    ev = Evaluator(mf.loaded, Strategy.load(strategy_path), seq_len=32, windows=ids)
    ref = ev.score(shape)
    assert full.top1_acc == pytest.approx(ref.top1_acc, abs=1e-9) and full.ppl == pytest.approx(ref.ppl, rel=1e-5)
    # Every rung is a row of the table (its own context), read back with its interval and windows.
    again = AccuracyTable(table.path)
    assert again.get(mf.fingerprints[0], shape.key) == low and again.get(mf.fingerprint, shape.key) == full
    # A lower rung of a shape scored at the full budget is its window prefix: nothing runs.
    other = AccuracyTable(tmp_path / "other.parquet")
    other.put(full)
    mf2 = MultiFidelityAccuracy(lambda s, idx: pytest.fail("ran the model for a derivable rung"), other, mf.base, 8, 32,
                                (2, 8))
    assert mf2.score(shape, 0).top1_acc == low.top1_acc


def synthetic(n_windows: int = 32, tokens: int = 63, seed: int = 0):
    """Per-window right-token counts of a smooth accuracy surface, correlated across shapes as a real
    model's are: token t of window w is right for shape s when ``u[w, t] + e[s, w, t] < p(s)``, with
    ``u`` shared by every shape (how hard the token is) and a small shape-specific ``e``."""
    u = np.random.default_rng(seed).random((n_windows, tokens))

    def p(s: SubnetShape) -> float:
        return float(0.1 + 0.35 * (1 - np.exp(-s.depth * 0.12)) * s.width ** 0.7)

    def run_windows(s: SubnetShape, idx):
        e = np.random.default_rng(zlib.crc32(s.key.encode())).normal(0, 0.05, u.shape)
        right = (u + e < p(s)).sum(1)
        return ([2.0 * tokens] * len(idx), [float(right[i]) for i in idx], [float(tokens)] * len(idx))

    return run_windows


def test_multifidelity_hierarchical_reaches_the_front_for_fewer_tokens(tmp_path: Path) -> None:
    import optuna

    space = SearchSpace.first_layers("llama2-7b", range(17, 33), fine_widths(0.5, 1.0, 1 / 8))
    lat = LatencyObjective("a5000", "pytorch", "llama2-7b", root=REPO / "device_profiles")
    table = AccuracyTable(tmp_path / "accuracy.parquet")
    mf = MultiFidelityAccuracy(synthetic(16), table, "synthetic", 16, 64, (2, 4, 16))
    shapes = space.shapes()
    truth = [mf(s) for s in shapes]
    L, A = [lat(s).ms for s in shapes], [r.top1_acc for r in truth]
    ref = (max(L) * 1.01, min(A))
    target = 0.99 * hypervolume(L, A, *ref)

    p = SearchProblem(space, mf, lat)
    study = run_hierarchical(p, tol=0.0)
    decided = [(e.latency_ms, e.accuracy) for e in p.history]
    assert hypervolume([x for x, _ in decided], [y for _, y in decided], *ref) >= target
    # Cost: tokens charged; screens are cheap, promotions pay only their missing windows.
    assert p.tokens == sum(mf.cost(None, r) for r in p.rung_of.values())
    assert len(p.rung_of) > len(p.history)  # some shapes were screened and never promoted
    # Every step is logged with its shape, rung and cost: they add up to the running total, each shape
    # climbs one rung at a time, and its last logged rung is the one it holds.
    assert len(p.steps) == len(p.events) and sum(c for _, _, c in p.steps) == p.tokens
    assert [t for t, _ in p.events] == list(np.cumsum([c for _, _, c in p.steps]))
    climbed: dict[str, list[int]] = {}
    for key, rung, cost in p.steps:
        climbed.setdefault(key, []).append(rung)
        assert cost == mf.cost(climbed[key][-2] if len(climbed[key]) > 1 else None, rung)
    assert all(r == list(range(r[0], r[-1] + 1)) and r[-1] == p.rung_of[k] for k, r in climbed.items())
    pts: list[tuple[float, float]] = []
    reach = None
    for tokens, ev in p.events:
        if ev is not None:
            pts.append((ev.latency_ms, ev.accuracy))
            if hypervolume([x for x, _ in pts], [y for _, y in pts], *ref) >= target:
                reach = tokens
                break
    exhaustive = len(shapes) * mf.tokens(-1)
    assert reach is not None and reach < 0.6 * exhaustive, (reach, exhaustive)
    # The study: full-budget shapes are complete trials (lower rungs as intermediate values), the rest pruned.
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    pruned = study.get_trials(states=[optuna.trial.TrialState.PRUNED])
    assert len(done) == len(p.history) and len(pruned) == len(p.rung_of) - len(p.history)
    t = done[0]
    assert set(t.intermediate_values) == {2, 4}
    assert t.user_attrs["accuracy_lo"] <= t.values[0] <= t.user_attrs["accuracy_hi"]
    assert [f["windows"] for f in t.user_attrs["fidelities"]] == [2, 4, 16]
    assert all(tr.user_attrs["screened_only"] and tr.user_attrs["fidelities"][0]["windows"] == 2 for tr in pruned)


def test_a_significantly_beaten_shape_is_not_promoted(tmp_path: Path) -> None:
    # Two shapes on the same windows: the slower one is worse on every window -> screened, never promoted
    # (the paired test needs MIN_PAIRED_WINDOWS = 8 shared windows, hence a first rung of 8).
    space = SearchSpace.first_layers("llama2-7b", (31, 32), (1.0,))
    lat = LatencyObjective("a5000", "pytorch", "llama2-7b", root=REPO / "device_profiles")

    def run_windows(s: SubnetShape, idx):
        good = s.depth == 31  # the faster shape is the better one
        return ([100.0] * len(idx), [40.0 if good else 20.0] * len(idx), [63.0] * len(idx))

    mf = MultiFidelityAccuracy(run_windows, AccuracyTable(tmp_path / "a.parquet"), "t", 16, 64, (8, 16))
    p = SearchProblem(space, mf, lat)
    run_hierarchical(p, tol=0.0)
    assert [e.shape.depth for e in p.history] == [31]
    assert p.rung_of == {space.shape(31, 1.0).key: 1, space.shape(32, 1.0).key: 0}
    assert p.tokens == 16 * 64 + 8 * 64


def test_the_window_adjusted_posterior_removes_what_windows_share(tmp_path: Path) -> None:
    # Window accuracy = shape effect + window offset, exactly (no residual): once two shapes are at the full
    # budget, a shape screened on 4 of 16 windows has its full-budget score predicted exactly, with sd 0,
    # although its 4 windows are easier than the average (the raw score is off by their offset).
    import optuna

    from search.halving import window_posterior
    from search.hierarchical import HierarchicalSearch

    space = SearchSpace.first_layers("llama2-7b", (30, 31, 32), (1.0,))
    lat = LatencyObjective("a5000", "pytorch", "llama2-7b", root=REPO / "device_profiles")
    offset = np.array([10, -6, 4, 8] + [-2] * 12)  # the first rung's windows (0, 8, 4, 12): +1 on average, all: -0.5
    base = {30: 30, 31: 40, 32: 50}

    def run_windows(s: SubnetShape, idx):
        return ([100.0] * len(idx), [float(base[s.depth] + offset[i]) for i in idx], [100.0] * len(idx))

    mf = MultiFidelityAccuracy(run_windows, AccuracyTable(tmp_path / "a.parquet"), "t", 16, 64, (4, 16))
    search = HierarchicalSearch(SearchProblem(space, mf, lat), optuna.create_study(directions=["maximize", "minimize"]),
                                None, 0.0, 0.0)
    order = mf.order
    for d in (31, 32):
        search._raise((space.depths.index(d), 0), 1)
    k = (space.depths.index(30), 0)
    search._raise(k, 0)
    assert list(order[:4]) == [0, 8, 4, 12]
    assert search.acc[k] == pytest.approx(0.31)  # the raw score carries its windows' offset
    est, sd, hi = window_posterior(search.recs, [(1, 0), (2, 0)])(k)
    assert est == pytest.approx(0.30 + (offset.mean() / 100)) and sd == pytest.approx(0.0) and hi == pytest.approx(est)
    # Fewer than two full-budget shapes: the raw score and its interval.
    assert window_posterior(search.recs, [(1, 0)])(k)[0] == search.acc[k]


@pytest.mark.slow  # lm-eval start-up and two subnet evaluations: about a minute on 2 cores
def test_search_objective_task_runs_lm_eval_on_the_subnet(strategy_path: Path, profiles: Path, tmp_path: Path) -> None:
    """`amoeba search --objective task:NAME` scores shapes with lm-eval (a local task) and stores the
    number with its interval; the stored value is what amoeba_core.tasks gives for the same shape."""
    pytest.importorskip("lm_eval")
    from typer.testing import CliRunner

    from amoeba.cli import app
    from amoeba_core import tasks
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy
    from tests.amoeba_core.test_tasks_lm_eval import TASK, write_local_task

    folder = write_local_task(tmp_path / "task", n_items=6)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["search", "--strategy", str(strategy_path), "--device", "cpu-host", "--flow",
                                   "pytorch", "--method", "hierarchical", "--trials", "2", "--depths", "2,4",
                                   "--widths", "1", "--objective", f"task:{TASK}", "--task-path", str(folder),
                                   "--task-limit", "6", "--run", str(run), "--root", str(profiles)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    recs = AccuracyTable(run / "accuracy.parquet").records()
    assert {r.depth for r in recs} == {2, 4} and all(f"task:{TASK}" in r.fingerprint for r in recs)
    r = next(x for x in recs if x.depth == 4)
    assert r.top1_lo <= r.top1_acc <= r.top1_hi
    st = Strategy.load(strategy_path)
    iv, items = tasks.task_accuracy(load_model("tiny"), st, st.shape(4, 1.0), TASK, 6, include_path=folder,
                                    offline=True)
    assert r.top1_acc == pytest.approx(iv.value) and len(items) == 6


def test_plot_draws_intervals_and_a_compared_front(run_dir: Path, profiles: Path, tmp_path: Path) -> None:
    from search.plot import draw, front_data, plot_fronts, run_label
    from search.query import QueryIndex, read_meta, write_meta
    from search.space import SearchSpace

    # A second run (as `amoeba search --adapters` would write): same shapes, labelled Stage 2.
    other = tmp_path / "stage2"
    other.mkdir()
    (other / "amoeba.db").write_bytes((run_dir / "amoeba.db").read_bytes())  # a copied run keeps its records
    write_meta(other, SearchSpace.from_dict(read_meta(run_dir)["space"]), {"adapters": "runs/x/adapters"})
    assert run_label(other).startswith("Stage 2 front") and run_label(run_dir).startswith("Stage 1 front")
    index = QueryIndex(run_dir, profiles)
    data = front_data(index, "cpu-host", "pytorch", compare=[(run_label(other), QueryIndex(other, profiles))])
    assert data.variant == "float32" and data.variant_note is None  # one variant: nothing to say
    assert len(data.others) == 1 and [p.key for p in data.others[0][1]] == [p.key for p in data.front]
    # Every front point carries its accuracy interval (stored with the score) for the error bars.
    assert all(p.accuracy_lo is not None and p.accuracy_lo <= p.accuracy <= p.accuracy_hi for p in data.front)
    png = draw(data, tmp_path / "f.png")
    assert png.stat().st_size > 10_000
    paths = plot_fronts(run_dir, tmp_path / "out", devices=["cpu-host"], root=profiles, variant="float32",
                        compare=[other])
    assert [p.name for p in paths] == ["front-cpu-host-pytorch-decode-float32.png"]
