"""Hierarchical search (AmoebaLLM): coarse over depth first, then width within promising depths.

The latency of every shape is known up front (a table look-up); accuracy is the expensive
objective. The scheme spends accuracy evaluations where they can still move the front:

1. **Coarse depth.** For each depth take its widest feasible width (the full width unless the
   budget rules it out). Evaluate ``ceil(sqrt(#depths))`` depths evenly spaced over the
   feasible depths, the smallest and largest included.
2. **Refine depth.** Between two evaluated neighbouring depths ``a < b``, the middle depth is a
   candidate. Assuming accuracy does not fall as depth grows, its best case is
   ``acc(b)`` at its own latency (with accuracy intervals: the upper end of the better
   neighbour's interval, so a noisy low score does not close a region); its *optimistic gain* is the hypervolume that best case would
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
   With attention and MLP widths as separate axes (``space.attn_widths``) the width index has no
   accuracy order, so step 3 is replaced by a bound over the partial order of shapes: every open
   shape is a candidate whose best case is the lowest best case of the evaluated shapes at least
   as deep and at least as wide on both axes (:meth:`HierarchicalSearch._bound_candidates`).
4. Stop when no candidate gains more than ``tol`` of the box, or after ``max_evaluations``.

Over-budget shapes are never evaluated (hard constraint). The scheme is deterministic; every
evaluation is recorded as a finished trial in the Optuna study.

**Multi-fidelity** (the problem's accuracy is a :class:`search.objectives.MultiFidelityAccuracy`
with several rungs): every step above *screens* its shape at the cheapest rung, and the accuracy
the scheme reasons with is a shape's latest (highest-rung) score. After each screen, successive
halving over the evaluation budget: a shape below the full budget is promoted one rung while its
accuracy interval still reaches the current front, i.e. no shape at most as slow is better by a
paired difference whose interval excludes 0 (:func:`amoeba_core.stats.paired_diff` on the
windows both have scored, at least ``MIN_PAIRED_WINDOWS`` (8) of them; ``prune_level`` 98% by
default, stricter than the 90% reported everywhere, because a shape is tested against several
faster ones). The open shape raised next is the one with the largest *expected* hypervolume gain per
token left on its ladder. The expectation is over a window-adjusted posterior of its full-budget score:
every window's difficulty is shared by all shapes, so once two shapes are at the full budget each window's
offset (``delta_w``) is known, a screened shape's estimate is the mean of its windows' accuracy minus their
offsets, and its sd is the pooled residual sd scaled to the windows still missing
(:func:`search.halving.window_posterior`). The optimism that keeps a shape open is that posterior's upper
end. (The rule it replaced, the most-raised open shape first by the gain of its raw interval's upper end,
is kept in benchmarks/_interval_promotion.py; benchmarks/search_efficiency.py replays both side by side.)
The exploration only screens; promotion starts when it ends, first for shapes on the front of current
estimates, then for the rest whose interval still reaches the front. Optuna's pruners do not support
multi-objective studies, so this lives here. Full-budget shapes are finished trials (lower rungs as
intermediate values, step = windows); shapes that never reached the full budget are PRUNED trials
carrying their rung scores and intervals.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from amoeba_core.shape import SubnetShape, as_axes
from search.halving import MIN_PAIRED_WINDOWS, PRUNE_LEVEL, upper_bound, window_posterior
from search.objectives import AccuracyRecord
from search.pareto import hypervolume, pareto_indices
from search.problem import DIRECTIONS, SearchProblem

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (depth index, width index) of a shape in the space


def run_hierarchical(problem: SearchProblem, max_evaluations: int | None = None, tol: float = 1e-3,
                     depth_tol: float = 5e-3, storage: Any = None, study_name: str | None = None,
                     ref_accuracy: float = 0.0, prune_level: float = PRUNE_LEVEL) -> Any:
    """Run the scheme above; returns the Optuna study holding one trial per evaluated shape."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=study_name, directions=list(DIRECTIONS),
                                load_if_exists=True)
    study.set_user_attr("space", problem.space.to_dict())
    study.set_user_attr("method", "hierarchical")
    if problem.budget_ms is not None:
        study.set_user_attr("budget_ms", problem.budget_ms)
    HierarchicalSearch(problem, study, max_evaluations, tol, depth_tol, ref_accuracy, prune_level).run()
    return study


class HierarchicalSearch:
    def __init__(self, problem: SearchProblem, study: Any, max_evaluations: int | None, tol: float,
                 depth_tol: float, ref_accuracy: float = 0.0, prune_level: float = PRUNE_LEVEL) -> None:
        self.p, self.study, self.tol, self.depth_tol, self.ref_acc = problem, study, tol, depth_tol, ref_accuracy
        self.prune_level = prune_level
        space = problem.space
        self.D, self.W = len(space.depths), len(space.width_axis)
        self.max_evals = max_evaluations if max_evaluations is not None else self.D * self.W
        self.lat = np.array([[problem.latency(space.shape(d, w)).ms for w in space.width_axis] for d in space.depths])
        budget = problem.budget_ms
        self.ok = self.lat <= budget if budget is not None else np.ones_like(self.lat, dtype=bool)
        self.acc: dict[Key, float] = {}
        # Best case of an evaluated shape for the candidates' optimism: its interval's upper end when
        # the accuracy carries one (a noisy low score must not close a region), else the value.
        self._best: dict[Key, float] = {}
        # (attention, MLP) width per width index: one ratio sets both unless the space has an attention axis
        wv = np.array([as_axes(w) for w in space.width_axis], dtype=float)
        self.two_axes = bool(space.attn_widths)
        self.wider = (wv[:, None, :] >= wv[None, :, :]).all(axis=2)  # wider[j2, j]: j2 at least as wide on both axes
        self.feasible_depths = [i for i in range(self.D) if self.ok[i].any()]
        self.widest = {i: int(np.flatnonzero(self.ok[i]).max()) for i in self.feasible_depths}
        self.narrowest = {i: int(np.flatnonzero(self.ok[i]).min()) for i in self.feasible_depths}
        self.ref_lat = float(self.lat[self.ok].max()) * (1 + 1e-9) + 1e-12 if self.ok.any() else 0.0
        mf = problem.fidelity
        self.top = len(mf.rungs) - 1 if mf is not None else 0
        self.recs: dict[Key, AccuracyRecord] = {}  # multi-fidelity: latest record per shape
        self._paired: dict[tuple[Key, int, Key, int], bool] = {}

    # -- bookkeeping -------------------------------------------------------------------
    def _shape(self, k: Key) -> SubnetShape:
        return self.p.space.shape(self.p.space.depths[k[0]], self.p.space.width_axis[k[1]])

    def _eval(self, i: int, j: int) -> None:
        if (i, j) in self.acc:
            return
        if self.top > 0:
            self._raise((i, j), 0)
            return
        shape = self._shape((i, j))
        known = len(self.p.history)
        ev = self.p.evaluate(shape)
        self.acc[(i, j)] = ev.accuracy
        hi = ev.score.top1_hi if ev.score is not None else None
        self._best[(i, j)] = ev.accuracy if hi is None else max(ev.accuracy, hi)
        if len(self.p.history) > known:
            self.p.record(self.study, ev)

    # -- multi-fidelity -----------------------------------------------------------------
    def _rung(self, k: Key) -> int:
        return self.p.rung_of.get(self._shape(k).key, -1)

    def _raise(self, k: Key, rung: int) -> None:
        shape = self._shape(k)
        known = len(self.p.history)
        rec = self.p.screen(shape, rung)
        self.recs[k], self.acc[k], self._best[k] = rec, rec.top1_acc, max(rec.top1_acc, upper_bound(rec))
        if len(self.p.history) > known:
            self.p.record(self.study, self.p.history[-1])

    def _surely_beaten(self, k: Key, front: list[Key]) -> bool:
        """True when a front shape at most as slow as ``k`` is significantly more accurate on shared windows."""
        from amoeba_core.stats import paired_diff

        s = self.recs[k]
        for t in front:
            if t == k or self.lat[t] > self.lat[k] or self.acc[t] <= self.acc[k]:
                continue
            key = (k, self._rung(k), t, self._rung(t))
            hit = self._paired.get(key)
            if hit is None:
                r = self.recs[t]
                m = min(len(s.window_correct or ()), len(r.window_correct or ()))
                if m < MIN_PAIRED_WINDOWS:
                    hit = False
                else:
                    d = paired_diff(r.window_correct[:m], s.window_correct[:m], r.window_count[:m], n_boot=1000,
                                    level=self.prune_level)
                    hit = d.diff.lo > 0
                self._paired[key] = hit
            if hit:
                return True
        return False

    def _promote(self, final: bool = False) -> None:
        """Successive halving: raise shapes whose interval reaches the front, most valuable first.

        First only shapes on the front of current estimates are raised; with ``final`` the others whose
        interval still reaches the front too."""
        while True:
            keys = list(self.recs)
            lat = np.array([self.lat[k] for k in keys])
            front = [keys[i] for i in pareto_indices(lat, np.array([self.acc[k] for k in keys]))]
            pool = keys if final else front
            open_ = [k for k in pool if self._rung(k) < self.top and not self._surely_beaten(k, front)]
            if not open_:
                return
            k = self._pick(open_, [k for k in keys if self._rung(k) == self.top])
            if k is None:
                return
            self._raise(k, self._rung(k) + 1)

    def _hv_gain(self, decided: list[Key]) -> Any:
        """``gain(k, a)``: hypervolume shape ``k`` at accuracy ``a`` adds to the front of the ``decided`` shapes."""
        dl = np.array([self.lat[k] for k in decided])
        da = np.array([self.acc[k] for k in decided])
        base = hypervolume(dl, da, self.ref_lat, self.ref_acc) if decided else 0.0

        def gain(k: Key, a: float) -> float:
            return hypervolume(np.append(dl, self.lat[k]), np.append(da, a), self.ref_lat, self.ref_acc) - base

        return gain

    def _pick(self, open_: list[Key], decided: list[Key]) -> Key | None:
        """The open shape to raise next: the largest expected hypervolume gain (its full-budget score under the
        window-adjusted posterior, 9-point Gauss-Hermite) per token still missing on its ladder, so a
        nearly-decided shape with a real chance of adding to the front goes before a cheap long shot. None
        when no open shape's optimistic gain (the posterior's upper end) adds ``tol`` of the box."""
        hv_gain, post = self._hv_gain(decided), window_posterior(self.recs, decided, self.prune_level)
        gains = {k: (hv_gain(k, post(k)[2]), post(k)[2], -float(self.lat[k])) for k in open_}
        if decided:
            floor = max(self.tol * self._box(), 0.0)
            open_ = [k for k in open_ if gains[k][0] > floor]
        if not open_:
            return None
        nodes, weights = np.polynomial.hermite_e.hermegauss(9)
        weights = weights / weights.sum()

        def value(k: Key) -> float:
            est, sd, _ = post(k)
            eg = sum(w * hv_gain(k, est + sd * x) for x, w in zip(nodes, weights))
            return eg / self.p.fidelity.cost(self._rung(k), self.top)

        return max(open_, key=lambda k: (value(k), gains[k]))

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
                best = max(self._best[(a, self.widest[a])], self._best[(b, self.widest[b])])
                out.append((m, self.widest[m], best))
        return out

    def _width_candidates(self) -> list[tuple[int, int, float]]:
        out = []
        for i in self.feasible_depths:
            js = sorted(j for j in range(self.W) if (i, j) in self.acc)
            if not js:
                continue
            if (i, self.narrowest[i]) not in self.acc:
                out.append((i, self.narrowest[i], self._best[(i, js[0])]))
            for a, b in zip(js, js[1:]):
                mids = [j for j in range(a + 1, b) if self.ok[i, j]]
                if mids:
                    out.append((i, mids[len(mids) // 2], max(self._best[(i, a)], self._best[(i, b)])))
            # Measured rows can make a width faster than narrower ones: the fastest open width is a candidate.
            open_js = [j for j in range(self.W) if self.ok[i, j] and (i, j) not in self.acc]
            if open_js:
                f = min(open_js, key=lambda j: self.lat[i, j])
                above = [self._best[(i, j)] for j in js if j > f]
                out.append((i, f, min(above) if above else max(self._best[(i, j)] for j in js)))
        # The depth axis again, along every width that has evaluations (a narrow column of
        # shallow-to-deep shapes can hold the front where the widest column does not).
        for j in range(self.W):
            col = sorted(i for i in self.feasible_depths if (i, j) in self.acc)
            if not col:
                continue
            lower = [i for i in self.feasible_depths if i < col[0] and self.ok[i, j]]
            if lower:
                out.append((lower[0], j, self._best[(col[0], j)]))
            for a, b in zip(col, col[1:]):
                mids = [i for i in self.feasible_depths if a < i < b and self.ok[i, j]]
                if mids:
                    out.append((mids[len(mids) // 2], j, max(self._best[(a, j)], self._best[(b, j)])))
        return out

    def _bound_candidates(self) -> list[tuple[int, int, float]]:
        """Every open feasible shape, its best case bounded through the partial order of shapes.

        With attention and MLP widths as separate axes the width index is not ordered by accuracy
        (d, a0.333, m0.625 is usually worse than d, a1, m0.5), so the midpoint rules of
        :meth:`_width_candidates` do not hold. A shape's accuracy cannot exceed that of any
        evaluated shape at least as deep and at least as wide on both axes: its best case is the
        smallest such best case (the largest best case seen when none dominates it).
        """
        if not self._best:
            return []
        best = np.full((self.D, self.W), np.inf)
        for (i, j), b in self._best.items():
            best[i, j] = b
        top = max(self._best.values())
        out = []
        for j in range(self.W):
            sub = best[:, self.wider[:, j]]  # evaluated shapes at least as wide as j, every depth
            bound = np.minimum.accumulate(sub[::-1], axis=0)[::-1].min(axis=1)  # ... and at least as deep
            for i in self.feasible_depths:
                if self.ok[i, j] and (i, j) not in self.acc:
                    out.append((i, j, float(bound[i]) if np.isfinite(bound[i]) else top))
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
        self._explore()
        if self.top > 0:
            self._promote()
            self._promote(final=True)
            for k in self.recs:
                if self._rung(k) < self.top:
                    self.p.record_screened(self.study, self._shape(k))
            log.info("hierarchical search: %d shapes screened, %d at the full budget, %d tokens", len(self.acc),
                     len(self.p.history), self.p.tokens)
        else:
            log.info("hierarchical search: %d evaluations", len(self.acc))

    def _explore(self) -> None:
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
        if self.two_axes:
            while self._step(self._bound_candidates(), self.tol):
                pass
            return
        while self._step(self._depth_candidates() + self._width_candidates(), self.tol):
            pass
