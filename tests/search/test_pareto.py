from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from search.pareto import hypervolume, pareto_indices, pareto_mask

# Small integer grids make ties and duplicates common, which is where sweeps go wrong.
points = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=0, max_size=40)


def brute_mask(pts: list[tuple[int, int]]) -> list[bool]:
    def dominates(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    return [not any(dominates(q, p) for q in pts) for p in pts]


def brute_hv(pts: list[tuple[int, int]], ref_lat: int, ref_acc: int) -> float:
    # Unit cells of the integer grid: a cell is covered when some point dominates its far corner.
    area = 0
    for x in range(0, ref_lat):
        for y in range(ref_acc, 13):
            if any(p[0] <= x and p[1] >= y + 1 for p in pts):
                area += 1
    return float(area)


@settings(max_examples=300, deadline=None)
@given(points)
def test_mask_matches_brute_force(pts: list[tuple[int, int]]) -> None:
    lat = [p[0] for p in pts]
    acc = [p[1] for p in pts]
    assert pareto_mask(lat, acc).tolist() == brute_mask(pts)
    idx = pareto_indices(lat, acc)
    assert sorted(idx) == [i for i, m in enumerate(brute_mask(pts)) if m]
    assert [lat[i] for i in idx] == sorted(lat[i] for i in idx)


@settings(max_examples=200, deadline=None)
@given(points, st.integers(1, 13), st.integers(0, 6))
def test_hypervolume_matches_brute_force(pts: list[tuple[int, int]], ref_lat: int, ref_acc: int) -> None:
    lat = [p[0] for p in pts]
    acc = [p[1] for p in pts]
    assert hypervolume(lat, acc, ref_lat, ref_acc) == brute_hv(pts, ref_lat, ref_acc)


def test_hypervolume_agrees_with_optuna() -> None:
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    lat, acc = rng.uniform(1, 10, 200), rng.uniform(0, 1, 200)
    ref = np.array([11.0, 0.0])
    # Optuna minimises every objective: flip accuracy.
    loss = np.stack([lat, -acc], axis=1)
    expected = compute_hypervolume(loss, np.array([ref[0], -ref[1]]))
    assert abs(hypervolume(lat, acc, ref[0], ref[1]) - expected) < 1e-9


def test_sweep_is_fast_for_many_points() -> None:
    import time

    rng = np.random.default_rng(1)
    lat, acc = rng.uniform(0, 1, 100_000), rng.uniform(0, 1, 100_000)
    t0 = time.perf_counter()
    mask = pareto_mask(lat, acc)
    assert time.perf_counter() - t0 < 2.0 and 0 < mask.sum() < 100
