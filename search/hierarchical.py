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
faster ones). Which open shape is raised next (``promotion``):

- ``"value"`` (default): the one with the largest *expected* hypervolume gain per token left on its
  ladder. The expectation is over a window-adjusted posterior of its full-budget score: every window's
  difficulty is shared by all shapes, so once two shapes are at the full budget each window's offset
  (``delta_w``) is known, a screened shape's estimate is the mean of its windows' accuracy minus their
  offsets, and its sd is the pooled residual sd scaled to the windows still missing
  (:meth:`HierarchicalSearch._posterior`; on the 128-window SmolLM2 cache the offsets took the per-window
  sd from 0.063 to 0.045 in a scratch look, not in a result file). The optimism that keeps a shape open
  is that posterior's upper end.
- ``"interval"`` (the earlier rule): the most-raised open shape first (a shape's ladder is finished
  before cheaper rungs of others are run), among those in order of optimistic gain (hypervolume its raw
  interval's upper end would add to the front of full-budget shapes; below 8 windows that upper end is
  widened to a Wilson bound over the rung's tokens, :func:`_upper`).

By default the exploration only screens;
promotion starts when it ends, first for shapes on the front of current estimates, then for the
rest whose interval still reaches the front (``promote_early``: raise front shapes while
exploring). In scratch replays of benchmarks/search_efficiency.py's SmolLM2 caches (not in its result
files), screening first reached 99% of the front for fewer tokens on the 80-shape space and on the
240-shape space at a 64-window full budget (ladder 2/8/64: 0.19 vs 0.25 of the exhaustive tokens);
promoting early did better only on the 240-shape space at 16 windows (2/8/16: 0.28 vs 0.34).
Optuna's pruners do not support
multi-objective studies, so this lives here. Full-budget shapes are finished trials (lower rungs as
intermediate values, step = windows); shapes that never reached the full budget are PRUNED trials
carrying their rung scores and intervals.
"""

from __future__ import annotations

import logging
import math
from statistics import NormalDist
from typing import Any

import numpy as np

from search.pareto import hypervolume, pareto_indices
from search.problem import DIRECTIONS, SearchProblem

log = logging.getLogger(__name__)

# A screened shape stops when a faster-or-equal shape beats it by a paired interval at this level that
# excludes 0 (two-sided 98%: 1% one-sided error per comparison, as a shape is compared with several).
PRUNE_LEVEL = 0.98
# ... and only on at least this many shared windows: a bootstrap over 2 windows excludes 0 whenever
# both differences have the same sign (on the 240-shape SmolLM2 space, ladders starting at 2 windows
# pruned front shapes that way and never reached 99% of the front).
MIN_PAIRED_WINDOWS = 8
PROMOTIONS = ("value", "interval")


def _upper(rec: Any) -> float:
    """Upper end of a screened shape's top-1 interval, for optimism.

    Below ``MIN_PAIRED_WINDOWS`` windows a bootstrap over windows is degenerate (over 2 windows
    its upper end is about the better window's accuracy), so the interval is widened to at least
    a Wilson bound over the rung's tokens at ``PRUNE_LEVEL`` (tokens of a window are correlated, so
    this is still optimistic about the precision; it only keeps a cheap score from closing a region).
    """
    hi = rec.interval()[1]
    n_win = len(rec.window_correct or ())
    if 0 < n_win < MIN_PAIRED_WINDOWS and rec.window_count:
        n = float(sum(rec.window_count))
        p = float(sum(rec.window_correct)) / n
        z = NormalDist().inv_cdf(0.5 + PRUNE_LEVEL / 2)  # two-sided PRUNE_LEVEL: 2.326 at 98%
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        hi = max(hi, centre + half)
    return float(hi)


def run_hierarchical(problem: SearchProblem, max_evaluations: int | None = None, tol: float = 1e-3,
                     depth_tol: float = 5e-3, storage: Any = None, study_name: str | None = None,
                     ref_accuracy: float = 0.0, prune_level: float = PRUNE_LEVEL, promote_early: bool = False,
                     promotion: str = "value") -> Any:
    """Run the scheme above; returns the Optuna study holding one trial per evaluated shape.

    ``promotion`` (multi-fidelity only): ``"value"`` (default) raises the open shape with the largest expected
    hypervolume gain per token left on its ladder; ``"interval"`` is the earlier rule (the most-raised open shape
    first, by the gain of its raw interval's upper end)."""
    import optuna

    if promotion not in PROMOTIONS:
        raise ValueError(f"promotion must be one of {PROMOTIONS}, got {promotion!r}")

    study = optuna.create_study(storage=storage, study_name=study_name, directions=list(DIRECTIONS),
                                load_if_exists=True)
    study.set_user_attr("space", problem.space.to_dict())
    study.set_user_attr("method", "hierarchical")
    if problem.budget_ms is not None:
        study.set_user_attr("budget_ms", problem.budget_ms)
    search = HierarchicalSearch(problem, study, max_evaluations, tol, depth_tol, ref_accuracy, prune_level)
    search.eager = promote_early
    search.promotion = promotion
    search.run()
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
        self.acc: dict[tuple[int, int], float] = {}
        # Best case of an evaluated shape for the candidates' optimism: its interval's upper end when
        # the accuracy carries one (a noisy low score must not close a region), else the value.
        self._best: dict[tuple[int, int], float] = {}
        # (attention, MLP) width per width index: one ratio sets both unless the space has an attention axis
        wv = np.array([(w.attn, w.mlp) if hasattr(w, "mlp") else (w, w) for w in space.width_axis], dtype=float)
        self.two_axes = bool(space.attn_widths)
        self.wider = (wv[:, None, :] >= wv[None, :, :]).all(axis=2)  # wider[j2, j]: j2 at least as wide on both axes
        self.feasible_depths = [i for i in range(self.D) if self.ok[i].any()]
        self.widest = {i: int(np.flatnonzero(self.ok[i]).max()) for i in self.feasible_depths}
        self.narrowest = {i: int(np.flatnonzero(self.ok[i]).min()) for i in self.feasible_depths}
        self.ref_lat = float(self.lat[self.ok].max()) * (1 + 1e-9) + 1e-12 if self.ok.any() else 0.0
        mf = problem.fidelity
        self.top = len(mf.rungs) - 1 if mf is not None else 0
        self.recs: dict[tuple[int, int], Any] = {}  # multi-fidelity: latest record per shape
        self._paired: dict[tuple[Any, ...], bool] = {}
        self._exploring = False
        self.eager = False  # promote_early: raise front shapes while exploring (default: screen first)
        self.promotion = "value"

    # -- bookkeeping -------------------------------------------------------------------
    def _shape(self, k: tuple[int, int]) -> Any:
        return self.p.space.shape(self.p.space.depths[k[0]], self.p.space.width_axis[k[1]])

    def _eval(self, i: int, j: int) -> None:
        if (i, j) in self.acc:
            return
        if self.top > 0:
            self._raise((i, j), 0)
            if self._exploring and self.eager:  # not during the coarse pass: its shapes are compared with each other first
                self._promote()
            return
        shape = self._shape((i, j))
        known = len(self.p.history)
        ev = self.p.evaluate(shape)
        self.acc[(i, j)] = ev.accuracy
        self._best[(i, j)] = ev.accuracy if ev.accuracy_hi is None else max(ev.accuracy, ev.accuracy_hi)
        if len(self.p.history) > known:
            self.p.record(self.study, ev)

    # -- multi-fidelity -----------------------------------------------------------------
    def _rung(self, k: tuple[int, int]) -> int:
        return self.p.rung_of.get(self._shape(k).key, -1)

    def _raise(self, k: tuple[int, int], rung: int) -> None:
        shape = self._shape(k)
        known = len(self.p.history)
        rec = self.p.screen(shape, rung)
        self.recs[k], self.acc[k], self._best[k] = rec, rec.top1_acc, max(rec.top1_acc, _upper(rec))
        if len(self.p.history) > known:
            self.p.record(self.study, self.p.history[-1])

    def _surely_beaten(self, k: tuple[int, int], front: list[tuple[int, int]]) -> bool:
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

        During exploration only shapes on the front of current estimates are raised; the others whose
        interval still reaches the front wait until exploration ends (``final``)."""
        while True:
            keys = list(self.recs)
            lat = np.array([self.lat[k] for k in keys])
            front = [keys[i] for i in pareto_indices(lat, np.array([self.acc[k] for k in keys]))]
            pool = keys if final else front
            open_ = [k for k in pool if self._rung(k) < self.top and not self._surely_beaten(k, front)]
            if not open_:
                return
            decided = [k for k in keys if self._rung(k) == self.top]
            dl = np.array([self.lat[k] for k in decided])
            da = np.array([self.acc[k] for k in decided])
            base = hypervolume(dl, da, self.ref_lat, self.ref_acc) if decided else 0.0
            post = self._posterior(decided) if self.promotion != "interval" else None

            def hv_gain(k: tuple[int, int], a: float) -> float:
                return hypervolume(np.append(dl, self.lat[k]), np.append(da, a), self.ref_lat, self.ref_acc) - base

            def gain(k: tuple[int, int]) -> tuple[float, float, float]:
                hi = _upper(self.recs[k]) if post is None else post(k)[2]
                return (hv_gain(k, hi), hi, -float(self.lat[k]))

            gains = {k: gain(k) for k in open_}
            floor = self.tol * self._box() if decided else -math.inf
            open_ = [k for k in open_ if gains[k][0] > max(floor, 0.0) or not decided]
            if not open_:
                return
            # "value": raise the open shape with the largest expected hypervolume gain (its full-budget score under
            # the window-adjusted posterior, 9-point Gauss-Hermite) per token still missing on its ladder, so a
            # nearly-decided shape with a real chance of adding to the front goes before a cheap long shot.
            # "interval" (the earlier rule): finish a shape's ladder before raising others, the most-raised open
            # shape first, best upper-end gain among those. Chosen before replaying (benchmarks/search_efficiency.py,
            # whose result files run both side by side).
            if post is not None:
                nodes, weights = np.polynomial.hermite_e.hermegauss(9)
                weights = weights / weights.sum()

                def value(k: tuple[int, int]) -> float:
                    est, sd, _ = post(k)
                    eg = sum(w * hv_gain(k, est + sd * x) for x, w in zip(nodes, weights))
                    return eg / self.p.fidelity.cost(self._rung(k), self.top)

                k = max(open_, key=lambda k: (value(k), gains[k]))
            else:
                k = max(open_, key=lambda k: (self._rung(k), gains[k]))
            self._raise(k, self._rung(k) + 1)

    def _posterior(self, decided: list[tuple[int, int]]) -> Any:
        """(estimate, sd, upper end) of a screened shape's full-budget top-1, window-adjusted.

        Every window's difficulty is common to all shapes: ``delta_w`` = mean over full-budget shapes of
        (window accuracy - full accuracy). A screened shape's estimate is the token-weighted mean of its
        scored windows' (accuracy - delta_w); its sd ``sigma * sqrt((N - n) / (N n))`` with ``sigma`` the
        pooled residual sd of the full-budget shapes' windows. The offsets' own error is left out (it
        shrinks as shapes reach the full budget; with the first few the sd is optimistic). With fewer
        than 2 full-budget shapes: the raw score and its interval (:func:`_upper`)."""
        z = NormalDist().inv_cdf(0.5 + self.prune_level / 2)

        def raw(k: tuple[int, int]) -> tuple[float, float, float]:
            hi = _upper(self.recs[k])
            return self.acc[k], max(hi - self.acc[k], 0.0) / z, hi

        if len(decided) < 2:
            return raw
        C = np.array([self.recs[k].window_correct for k in decided], dtype=float)
        T = np.array([self.recs[k].window_count for k in decided], dtype=float)
        A = C / np.maximum(T, 1)
        full = C.sum(1, keepdims=True) / T.sum(1, keepdims=True)
        delta = (A - full).mean(0)
        res = A - full - delta
        n_s, n_w = A.shape
        sigma = float(np.sqrt((res ** 2).sum() / max((n_s - 1) * (n_w - 1), 1)))
        N = n_w

        def adjusted(k: tuple[int, int]) -> tuple[float, float, float]:
            r = self.recs[k]
            n = len(r.window_correct or ())
            if n == 0 or n > N:
                return raw(k)
            c, t = np.array(r.window_correct, dtype=float), np.array(r.window_count, dtype=float)
            est = float(((c / np.maximum(t, 1) - delta[:n]) * t).sum() / t.sum())
            sd = sigma * math.sqrt(max(N - n, 0) / (N * n))
            return est, sd, est + z * sd

        return adjusted

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
        self._exploring = True
        if self.top > 0 and self.eager:
            self._promote()
        while self._step(self._depth_candidates(), self.depth_tol):
            pass
        if self.two_axes:
            while self._step(self._bound_candidates(), self.tol):
                pass
            return
        while self._step(self._depth_candidates() + self._width_candidates(), self.tol):
            pass
