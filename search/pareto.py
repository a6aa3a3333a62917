"""Two-objective Pareto fronts: latency (lower is better) against accuracy (higher is better).

``pareto_mask`` is the O(n log n) sweep: sort by latency (ties: best accuracy first), walk once
keeping the best accuracy seen at strictly lower latency. A point is on the front when no other
point is at least as good in both objectives and strictly better in one; exact duplicates of a
front point are all kept (neither dominates the other).

``hypervolume`` is the area dominated by a set of points and bounded by a reference point
``(ref_latency_ms, ref_accuracy)`` (the worst corner), computed on the front in one sweep.
It agrees with Optuna's ``compute_hypervolume`` (checked in the tests); the 2-D case is
written out so the benchmark can call it thousands of times cheaply.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pareto_mask(latency: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points (minimise latency, maximise accuracy)."""
    lat = np.asarray(latency, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    if lat.shape != acc.shape or lat.ndim != 1:
        raise ValueError("latency and accuracy must be 1-D sequences of the same length")
    n = lat.size
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    order = np.lexsort((-acc, lat))  # by latency, then accuracy descending
    best_lower = -np.inf  # best accuracy among strictly faster points
    i = 0
    while i < n:
        j = i
        lat_i = lat[order[i]]
        while j < n and lat[order[j]] == lat_i:
            j += 1
        group = order[i:j]
        top = acc[group[0]]  # the group's best accuracy (sorted descending)
        if top > best_lower:
            mask[group[acc[group] == top]] = True
            best_lower = top
        i = j
    return mask


def pareto_indices(latency: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the front, ordered by latency (fastest first)."""
    lat = np.asarray(latency, dtype=float)
    idx = np.flatnonzero(pareto_mask(latency, accuracy))
    return [int(i) for i in idx[np.argsort(lat[idx], kind="stable")]]


def hypervolume(latency: Sequence[float], accuracy: Sequence[float], ref_latency_ms: float,
                ref_accuracy: float) -> float:
    """Area dominated by the points inside the box ``latency < ref``, ``accuracy > ref``."""
    lat = np.asarray(latency, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    keep = (lat < ref_latency_ms) & (acc > ref_accuracy)
    lat, acc = lat[keep], acc[keep]
    if lat.size == 0:
        return 0.0
    idx = pareto_indices(lat, acc)
    area = 0.0
    prev_acc = ref_accuracy
    # Along the front accuracy rises with latency: the slab between two successive accuracy
    # levels is dominated from the fastest point that reaches the upper level to the reference.
    for k in idx:
        if acc[k] > prev_acc:
            area += (ref_latency_ms - lat[k]) * (acc[k] - prev_acc)
            prev_acc = acc[k]
    return float(area)
