"""Swap refinement of the depth DP's removal sets (amoeba_core.depth.swap_refine, select_depth(refine=...))."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest

from amoeba_core.depth import dp_depth, swap_candidates, swap_refine
from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel, _finish, random_llama, tiny_tokenizer
from amoeba_core.select import screen_evaluator, select_depth, significant_gain
from amoeba_core.shape import ModelGeometry, SubnetShape

N = 8


def _kept(n: int, removed) -> SubnetShape:
    """The shape that keeps every layer of ``n`` not in ``removed``."""
    return SubnetShape(tuple(i for i in range(n) if i not in set(removed)))


def _without_judge(moves: list[dict]) -> list[dict]:
    """Moves without the rule's verdict record (the plain rule has none)."""
    return [{k: v for k, v in m.items() if k != "judge"} for m in moves]


def _pairwise_cost(seed: int = 4):
    """A removal cost with pairwise interactions, on which the DP's sets are not optimal (seed 4)."""
    rng = random.Random(seed)
    a = [rng.uniform(0, 1) for _ in range(N)]
    b = {(i, j): rng.uniform(-0.6, 0.6) for i in range(N) for j in range(i + 1, N)}

    def cost(removed) -> float:
        r = sorted(removed)
        return sum(a[i] for i in r) + sum(b[i, j] for i, j in itertools.combinations(r, 2))

    return cost


def test_swaps_reach_the_optimum_the_dp_misses() -> None:
    cost = _pairwise_cost()
    calls: list[int] = []

    def many(shapes: list[SubnetShape]) -> list[float]:
        calls.append(len(shapes))
        return [cost(set(range(N)) - set(s.layers)) for s in shapes]

    dp = dp_depth(N, 4, metric=lambda s: many([s])[0])
    for d in (5, 4):
        best = min(itertools.combinations(range(N - 1), N - d), key=cost)
        dp_removed = frozenset(range(N)) - frozenset(dp.layers[d])
        assert cost(dp_removed) > cost(best) + 1e-9  # the DP's set is not the optimum here
        calls.clear()
        r = swap_refine(N, dp_removed, many)
        assert math.isclose(r.score, cost(best)) and r.removed == frozenset(best)
        assert r.start_score == cost(dp_removed) and r.start_removed == dp_removed and N - 1 not in r.removed
        scores = [m["after"] for m in r.moves]
        assert r.moves and scores == sorted(scores, reverse=True) and scores[-1] == r.score
        # every pass scores all m * (N - 1 - m) swaps; the start set once
        m = N - d
        assert calls == [1] + [m * (N - 1 - m)] * r.passes and r.evaluations == sum(calls)
        assert r.passes == len(r.moves) + 1  # the last pass found no better swap


def test_screening_scores_only_the_best_screened_swaps() -> None:
    cost = _pairwise_cost()
    full, screened = [], []

    def many(shapes):
        full.extend(shapes)
        return [cost(set(range(N)) - set(s.layers)) for s in shapes]

    def screen(shapes):  # the same order as the metric, on another scale: screening keeps the best swaps
        screened.extend(shapes)
        return [2 * cost(set(range(N)) - set(s.layers)) + 1 for s in shapes]

    start = frozenset({0, 1, 2})
    r = swap_refine(N, start, many, screen_many=screen, keep=2)
    best = min(itertools.combinations(range(N - 1), 3), key=cost)
    assert r.removed == frozenset(best)
    assert len(full) == 1 + 2 * r.passes and r.screened == len(screened) == 3 * 4 * r.passes
    assert len(swap_candidates(N, start)) == 3 * 4


def test_bad_start_sets_are_refused() -> None:
    with pytest.raises(AmoebaError, match="last layer"):
        swap_refine(N, {2, N - 1}, lambda s: [0.0] * len(s))
    with pytest.raises(AmoebaError, match="keep"):
        swap_refine(N, {2}, lambda s: [0.0] * len(s), keep=0)


@pytest.fixture(scope="module")
def deep() -> LoadedModel:
    g = replace(ModelGeometry.preset("tiny"), n_layers=10, name="tiny10")
    return _finish(random_llama(g, "float32", seed=1), tiny_tokenizer(g.vocab), "tiny10")


def test_select_depth_refines_the_asked_depths_on_its_own_metric(deep: LoadedModel, tmp_path: Path) -> None:
    cache = tmp_path / "dp.jsonl"
    plain, _ = select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=cache)
    refined, calib = select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=cache, refine=(8, 6))
    assert set(refined.refined) == {8, 6}
    for d in plain.layers:
        if d in (8, 6):
            assert refined.scores[d] <= plain.scores[d]  # never worse than the DP's set on its metric
            assert math.isclose(refined.scores[d], calib.score(SubnetShape(refined.layers[d])).ppl)
            assert refined.refined[d].start_score == pytest.approx(plain.scores[d])
            assert len(refined.layers[d]) == d and 9 in refined.layers[d]
        else:
            assert refined.layers[d] == plain.layers[d]
    screen = screen_evaluator(calib, 2)
    assert screen.n_windows == 2 and screen.cache == calib.cache
    assert screen.ids.tolist() == [calib.ids[0].tolist(), calib.ids[-1].tolist()]
    with pytest.raises(AmoebaError, match="cannot refine depths"):
        select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=cache, refine=(5,))



def test_select_strategy_records_what_the_swaps_did(deep: LoadedModel) -> None:
    from amoeba_core.select import select_strategy

    s = select_strategy(deep, 7, widths=(1.0,), calib_seq_len=32, calib_windows=2, stats_windows=1, val_windows=1,
                        refine_depths=(8, 7))
    sw = s.stats["swap_refinement"]
    assert set(sw) == {"8", "7"} and s.stats["swap_seconds"] >= 0
    for d in (8, 7):
        assert sw[str(d)]["calib"] <= sw[str(d)]["dp_calib"]
        assert sw[str(d)]["screened"] == 0  # 2 calibration windows: nothing fewer to screen on
        assert sw[str(d)]["removed"] == sorted(set(range(10)) - set(s.depth_layers[d]))
    assert "swap_refinement" not in select_strategy(deep, 9, widths=(1.0,), calib_seq_len=32, calib_windows=2,
                                                    stats_windows=1, val_windows=1).stats


def test_a_refused_swap_stops_the_search_and_is_recorded() -> None:
    cost = _pairwise_cost()
    many = lambda shapes: [cost(set(range(N)) - set(s.layers)) for s in shapes]  # noqa: E731
    start = frozenset({0, 1, 2})
    free = swap_refine(N, start, many)
    assert free.moves  # without a rule this start set improves
    asked: list[tuple[SubnetShape, SubnetShape]] = []

    def refuse(cur: SubnetShape, cand: SubnetShape) -> bool:
        asked.append((cur, cand))
        return False

    r = swap_refine(N, start, many, accept=refuse)
    assert r.removed == start and r.score == r.start_score and r.passes == 1 and not r.moves
    first = (start - set(free.moves[0]["restored"])) | set(free.moves[0]["removed"])  # the free search's 1st swap
    assert asked == [(_kept(N, start), _kept(N, first))]
    assert r.refused == {**free.moves[0]} and r.record()["refused"] == free.moves[0]
    assert "refused" not in free.record()


def _any_lower(calib: object) -> None:  # a judge that takes every lower-scoring swap (benchmarks/stage1.py's +swap)
    return None


def test_significant_rule_takes_only_swaps_whose_interval_excludes_zero(deep: LoadedModel, tmp_path: Path) -> None:
    from amoeba_core.evaluate import compare

    cache = tmp_path / "dp.jsonl"
    lower, _ = select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=cache, refine=(8, 7, 6),
                            judge=_any_lower)
    sig, calib = select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=cache, refine=(8, 7, 6),
                              judge=significant_gain)
    shape = lambda removed: _kept(10, removed)  # noqa: E731
    for d in (8, 7, 6):
        r = sig.refined[d]
        cur = r.start_removed
        for m in r.moves:  # every swap taken: its gain's paired interval lies below 0
            nxt = (set(cur) - set(m["restored"])) | set(m["removed"])
            a, b = calib.score_many([shape(nxt), shape(cur)])
            assert compare(a, b, "nll").diff.hi < 0
            cur = frozenset(nxt)
        assert cur == r.removed
        if r.refused:  # the swap it stopped at scored lower, but its interval holds 0
            nxt = (set(cur) - set(r.refused["restored"])) | set(r.refused["removed"])
            a, b = calib.score_many([shape(nxt), shape(cur)])
            assert a.ppl < b.ppl and compare(a, b, "nll").diff.hi >= 0
        # the same search, stopped earlier or at the same place: its swaps are the plain rule's first ones
        assert _without_judge(r.moves) == lower.refined[d].moves[:len(r.moves)] and r.score >= lower.refined[d].score
    assert any(sig.refined[d].refused or sig.refined[d].moves for d in (8, 7, 6))


def test_confirm_rule_judges_swaps_on_more_calibration_windows(deep: LoadedModel, tmp_path: Path) -> None:
    from amoeba_core.evaluate import compare
    from amoeba_core.select import confirm_evaluator

    cache = tmp_path / "dp.jsonl"
    lower, _ = select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=cache, refine=(8, 7, 6),
                            judge=_any_lower)
    conf, calib = select_depth(deep, 6, calib_seq_len=32, calib_windows=4, cache=cache, refine=(8, 7, 6),
                               confirm_windows=12)  # the library's rule
    judge = confirm_evaluator(calib, 12)
    # 12 distinct windows (half from each source): a larger budget than the search's 4, same split and cache
    assert judge.n_windows == 12 and judge.cache == calib.cache and judge.split == calib.split
    assert len({tuple(w) for w in judge.ids.tolist()}) == 12
    shape = lambda removed: _kept(10, removed)  # noqa: E731
    for d in (8, 7, 6):
        r = conf.refined[d]
        cur = r.start_removed
        for m in r.moves:  # every swap taken: lower on the search's windows, interval below 0 on the judge's
            nxt = (set(cur) - set(m["restored"])) | set(m["removed"])
            a, b = judge.score_many([shape(nxt), shape(cur)])
            assert compare(a, b, "nll").diff.hi < 0 and m["after"] < m["before"]
            assert m["judge"]["windows"] == 12 and m["judge"]["nll_ci90"][1] < 0  # the judge's verdict, recorded
            cur = frozenset(nxt)
        assert cur == r.removed
        if r.refused:
            nxt = (set(cur) - set(r.refused["restored"])) | set(r.refused["removed"])
            a, b = judge.score_many([shape(nxt), shape(cur)])
            assert compare(a, b, "nll").diff.hi >= 0 and r.refused["judge"]["nll_ci90"][1] >= 0
        assert _without_judge(r.moves) == lower.refined[d].moves[:len(r.moves)]
    assert any(conf.refined[d].moves or conf.refined[d].refused for d in (8, 7, 6))  # the judge was asked
    with pytest.raises(AmoebaError, match="confirmation windows"):
        confirm_evaluator(calib, 0)
