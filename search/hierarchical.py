"""Hierarchical search (AmoebaLLM): coarse over depth first, then width within promising depths.

The latency of every shape is known up front (a table look-up); accuracy is the expensive
objective. The scheme spends accuracy evaluations where they can still move the front:

1. **Coarse depth.** For each depth take its widest feasible width (the full width unless the
   budget rules it out). Evaluate ``ceil(sqrt(#depths))`` depths evenly spaced over the
   feasible depths, the smallest and largest included.
2. **Refine depth.** Between two evaluated neighbouring depths ``a < b``, the middle depth is a
   candidate. Assuming accuracy does not fall as depth grows, its best case is
   ``acc(b)`` at its own latency; its *optimistic gain* is the hypervolume that best case would
   add to the current front (reference point: the slowest feasible latency and accuracy
   ``ref_accuracy``, 0 by default, the floor of top-1 accuracy, so fast low-accuracy shapes count). Repeatedly evaluate the candidate with the largest gain until no depth candidate
   gains more than ``depth_tol`` of the front's bounding box.
3. **Width within promising depths.** Every evaluated depth opens its width axis: first its
   narrowest feasible width, then, between two evaluated widths, the middle one, each with best
   case = accuracy of the next wider evaluated width (accuracy does not fall as width grows).
   Because measured latencies need not fall monotonically with width, the fastest
   not-yet-evaluated width of the depth is a candidate too. Every width column with
   evaluations also reopens the depth axis: its shallowest feasible depth, and the middle depth
   between two evaluated depths of the column (best case: the deeper one's accuracy).
   Depth candidates stay in the pool. Evaluate the largest optimistic gain first; a depth whose
   candidates cannot add ``tol`` of the box is no longer promising and gets no more evaluations.
4. Stop when no candidate gains more than ``tol`` of the box, or after ``max_evaluations``.

Over-budget shapes are never evaluated (hard constraint). The scheme is deterministic; every
evaluation is recorded as a finished trial in the Optuna study.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from search.pareto import hypervolume
from search.problem import DIRECTIONS, SearchProblem

log = logging.getLogger(__name__)


def run_hierarchical(problem: SearchProblem, max_evaluations: int | None = None, tol: float = 1e-3,
                     depth_tol: float = 5e-3, storage: Any = None, study_name: str | None = None,
                     ref_accuracy: float = 0.0) -> Any:
    """Run the scheme above; returns the Optuna study holding one trial per evaluated shape."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=study_name, directions=list(DIRECTIONS),
                                load_if_exists=True)
    study.set_user_attr("space", problem.space.to_dict())
    study.set_user_attr("method", "hierarchical")
    if problem.budget_ms is not None:
        study.set_user_attr("budget_ms", problem.budget_ms)
    HierarchicalSearch(problem, study, max_evaluations, tol, depth_tol, ref_accuracy).run()
    return study


class HierarchicalSearch:
    def __init__(self, problem: SearchProblem, study: Any, max_evaluations: int | None, tol: float,
                 depth_tol: float, ref_accuracy: float = 0.0) -> None:
        self.p, self.study, self.tol, self.depth_tol, self.ref_acc = problem, study, tol, depth_tol, ref_accuracy
        space = problem.space
        self.D, self.W = len(space.depths), len(space.widths)
        self.max_evals = max_evaluations if max_evaluations is not None else self.D * self.W
        self.lat = np.array([[problem.latency(space.shape(d, w)).ms for w in space.widths] for d in space.depths])
        budget = problem.budget_ms
        self.ok = self.lat <= budget if budget is not None else np.ones_like(self.lat, dtype=bool)
        self.acc: dict[tuple[int, int], float] = {}
        self.feasible_depths = [i for i in range(self.D) if self.ok[i].any()]
        self.widest = {i: int(np.flatnonzero(self.ok[i]).max()) for i in self.feasible_depths}
        self.narrowest = {i: int(np.flatnonzero(self.ok[i]).min()) for i in self.feasible_depths}
        self.ref_lat = float(self.lat[self.ok].max()) * (1 + 1e-9) + 1e-12 if self.ok.any() else 0.0

    # -- bookkeeping -------------------------------------------------------------------
    def _eval(self, i: int, j: int) -> None:
        if (i, j) in self.acc:
            return
        shape = self.p.space.shape(self.p.space.depths[i], self.p.space.widths[j])
        known = len(self.p.history)
        ev = self.p.evaluate(shape)
        self.acc[(i, j)] = ev.accuracy
        if len(self.p.history) > known:
            self.p.record(self.study, ev)

    def _done(self) -> bool:
        return len(self.acc) >= self.max_evals

    def _front_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        keys = list(self.acc)
        return (np.array([self.lat[k] for k in keys]), np.array([self.acc[k] for k in keys]))

    def _gains(self, cands: list[tuple[int, int, float]]) -> list[tuple[float, int, int]]:
        lat, acc = self._front_arrays()
        ref_acc = min(self.ref_acc, float(acc.min())) if acc.size else self.ref_acc
        base = hypervolume(lat, acc, self.ref_lat, ref_acc)
        out = []
        for i, j, best in cands:
            hv = hypervolume(np.append(lat, self.lat[i, j]), np.append(acc, best), self.ref_lat, ref_acc)
            out.append((hv - base, i, j))
        return out

    def _box(self) -> float:
        lat, acc = self._front_arrays()
        if acc.size < 2:
            return math.inf
        return float((self.ref_lat - lat.min()) * (acc.max() - min(self.ref_acc, acc.min()))) or math.inf

    # -- candidates --------------------------------------------------------------------
    def _depth_candidates(self) -> list[tuple[int, int, float]]:
        done = sorted(i for i in self.feasible_depths if (i, self.widest[i]) in self.acc)
        out = []
        for a, b in zip(done, done[1:]):
            mids = [i for i in self.feasible_depths if a < i < b]
            if mids:
                m = mids[len(mids) // 2]
                best = max(self.acc[(a, self.widest[a])], self.acc[(b, self.widest[b])])
                out.append((m, self.widest[m], best))
        return out

    def _width_candidates(self) -> list[tuple[int, int, float]]:
        out = []
        for i in self.feasible_depths:
            js = sorted(j for j in range(self.W) if (i, j) in self.acc)
            if not js:
                continue
            if (i, self.narrowest[i]) not in self.acc:
                out.append((i, self.narrowest[i], self.acc[(i, js[0])]))
            for a, b in zip(js, js[1:]):
                mids = [j for j in range(a + 1, b) if self.ok[i, j]]
                if mids:
                    out.append((i, mids[len(mids) // 2], max(self.acc[(i, a)], self.acc[(i, b)])))
            # Measured rows can make a width faster than narrower ones: the fastest open width is a candidate.
            open_js = [j for j in range(self.W) if self.ok[i, j] and (i, j) not in self.acc]
            if open_js:
                f = min(open_js, key=lambda j: self.lat[i, j])
                above = [self.acc[(i, j)] for j in js if j > f]
                out.append((i, f, min(above) if above else max(self.acc[(i, j)] for j in js)))
        # The depth axis again, along every width that has evaluations (a narrow column of
        # shallow-to-deep shapes can hold the front where the widest column does not).
        for j in range(self.W):
            col = sorted(i for i in self.feasible_depths if (i, j) in self.acc)
            if not col:
                continue
            lower = [i for i in self.feasible_depths if i < col[0] and self.ok[i, j]]
            if lower:
                out.append((lower[0], j, self.acc[(col[0], j)]))
            for a, b in zip(col, col[1:]):
                mids = [i for i in self.feasible_depths if a < i < b and self.ok[i, j]]
                if mids:
                    out.append((mids[len(mids) // 2], j, max(self.acc[(a, j)], self.acc[(b, j)])))
        return out

    def _step(self, cands: list[tuple[int, int, float]], tol: float) -> bool:
        if not cands or self._done():
            return False
        gain, i, j = max(self._gains(cands), key=lambda g: (g[0], -self.lat[g[1], g[2]]))
        if gain <= tol * self._box():
            return False
        self._eval(i, j)
        return True

    def run(self) -> None:
        fd = self.feasible_depths
        if not fd:
            log.warning("no shape fits the budget of %s ms", self.p.budget_ms)
            return
        k = max(2, math.ceil(math.sqrt(len(fd))))
        coarse = sorted({fd[round(t * (len(fd) - 1) / (k - 1))] for t in range(k)}) if len(fd) > 1 else fd
        for i in reversed(coarse):
            if self._done():
                return
            self._eval(i, self.widest[i])
        while self._step(self._depth_candidates(), self.depth_tol):
            pass
        while self._step(self._depth_candidates() + self._width_candidates(), self.tol):
            pass
        log.info("hierarchical search: %d evaluations", len(self.acc))
