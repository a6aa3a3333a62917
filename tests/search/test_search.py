from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amoeba_core.shape import SubnetShape
from search.evolutionary import run_optuna
from search.hierarchical import run_hierarchical
from search.objectives import AccuracyObjective, AccuracyTable
from search.latency import LatencyObjective
from search.pareto import hypervolume
from search.problem import SearchProblem
from search.space import SearchSpace, fine_widths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def accuracy(strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> AccuracyObjective:
    table = AccuracyTable(tmp_path_factory.mktemp("acc") / "accuracy.parquet")
    return AccuracyObjective.from_stage1(strategy_path, table, max_windows=2, seq_len=32)


@pytest.fixture(scope="module")
def space(strategy_path: Path) -> SearchSpace:
    return SearchSpace.from_strategy(strategy_path, widths=fine_widths(0.5, 1.0, 0.125))


def test_space_from_strategy(space: SearchSpace) -> None:
    assert space.model == "tiny" and space.depths == (1, 2, 3, 4) and space.size == 20
    assert space.widths == (0.5, 0.625, 0.75, 0.875, 1.0)
    assert space.shape(2, 0.75) == SubnetShape((0, 1), 0.75)
    assert SearchSpace.from_dict(space.to_dict()).shapes() == space.shapes()


def test_accuracy_is_evaluated_once_and_shared(accuracy: AccuracyObjective, space: SearchSpace) -> None:
    shape = space.shape(3, 0.75)
    before = accuracy.n_evaluated
    a = accuracy(shape)
    b = accuracy(shape)
    assert a == b and accuracy.n_evaluated == before + 1
    assert 0.0 <= a.top1_acc <= 1.0 and a.ppl is not None and a.ppl > 1 and a.n_tokens == 2 * 31
    # A second objective on the same table (another process, device or method) reuses the score.
    other = AccuracyObjective(lambda s: pytest.fail("re-evaluated a stored shape"), AccuracyTable(accuracy.table.path),
                              accuracy.fingerprint)
    assert other(shape) == a


def test_latency_phases(profiles: Path) -> None:
    dec = LatencyObjective("cpu-host", "pytorch", "tiny", "decode", root=profiles)
    pre = LatencyObjective("cpu-host", "pytorch", "tiny", "prefill", root=profiles)
    e2e = LatencyObjective("cpu-host", "pytorch", "tiny", "e2e", gen_len=10, root=profiles)
    d, p, e = dec.at(4, 1.0), pre.at(4, 1.0), e2e.at(4, 1.0)
    assert d.source == p.source == e.source == "measured"
    assert e.ms == pytest.approx(p.ms + 10 * d.ms)
    assert dec.at(4, 0.75).source == "predicted" and e2e.at(4, 0.75).measured_ms is None


def test_optuna_methods_are_reproducible(accuracy: AccuracyObjective, space: SearchSpace, profiles: Path) -> None:
    lat = LatencyObjective("cpu-host", "pytorch", "tiny", root=profiles)
    for method in ("nsga2", "tpe"):
        runs = []
        for _ in range(2):
            p = SearchProblem(space, accuracy, lat)
            study = run_optuna(p, method, n_trials=12, seed=3, population_size=4, n_startup_trials=4)
            assert len(study.trials) == 12 and all(len(t.values) == 2 for t in study.trials)
            runs.append([e.key for e in p.history])
        assert runs[0] == runs[1]


def test_budget_is_a_hard_constraint(accuracy: AccuracyObjective, space: SearchSpace, profiles: Path) -> None:
    lat = LatencyObjective("cpu-host", "pytorch", "tiny", root=profiles)
    all_ms = sorted(lat(s).ms for s in space.shapes())
    budget = all_ms[len(all_ms) // 2]
    p = SearchProblem(space, accuracy, lat, budget_ms=budget)
    study = run_hierarchical(p)
    assert p.history and all(e.latency_ms <= budget for e in p.history)
    assert len(study.trials) == len(p.history)
    p2 = SearchProblem(space, accuracy, lat, budget_ms=budget)
    study2 = run_optuna(p2, "nsga2", n_trials=10, seed=0, population_size=4)
    cons = [t.constraints["latency_budget"] for t in study2.trials]
    assert all((c <= 0) == (t.values[1] <= budget) for c, t in zip(cons, study2.trials))
    # Optuna's own best-trials honour the constraint.
    assert all(t.values[1] <= budget for t in study2.best_trials)


def test_hierarchical_finds_the_front_with_few_evaluations() -> None:
    # Pure search logic, deterministic: latency from the a5000 spec-sheet roofline (a real, labelled
    # profiler answer), a smooth stand-in for accuracy (the tiny random model's accuracy is flat).
    space = SearchSpace.first_layers("llama2-7b", range(17, 33), fine_widths(0.25, 1.0, 1 / 32))
    lat = LatencyObjective("a5000", "pytorch", "llama2-7b", root=REPO / "device_profiles")
    assert lat.at(32, 1.0).source == "roofline"

    def acc(s: SubnetShape) -> float:
        return float(1 - np.exp(-s.depth * 0.15) * (1.2 - s.width) ** 0.5)

    shapes = space.shapes()
    ref = (max(lat(s).ms for s in shapes) * 1.01, min(acc(s) for s in shapes))
    full = hypervolume([lat(s).ms for s in shapes], [acc(s) for s in shapes], *ref)
    p = SearchProblem(space, acc, lat)
    run_hierarchical(p, tol=1e-4)
    hv = [hypervolume([e.latency_ms for e in p.history[:k]], [e.accuracy for e in p.history[:k]], *ref)
          for k in range(1, len(p.history) + 1)]
    assert hv[-1] >= 0.99 * full
    needed = next(k for k, h in enumerate(hv, 1) if h >= 0.99 * full)
    assert needed <= space.size // 5, (needed, len(p.history))  # 40 of the 400 shapes are on this front
