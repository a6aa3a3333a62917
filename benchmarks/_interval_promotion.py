"""The promotion rule :mod:`search.hierarchical` used before its expected-gain rule, kept so that
``benchmarks/search_efficiency.py`` can replay both side by side (its result files' ``hierarchical-mf-interval[...]``
rows; the README's search rows compare them).

Finish a shape's ladder before raising others: among the open shapes, the most-raised first, and among those
the one whose raw interval's upper end (widened to a Wilson bound below 8 windows,
:func:`search.halving.upper_bound`) adds the most hypervolume to the front of full-budget shapes.
"""

from __future__ import annotations

import math
from typing import Any

from search.halving import upper_bound
from search.hierarchical import HierarchicalSearch, Key
from search.problem import DIRECTIONS, SearchProblem


class IntervalPromotion(HierarchicalSearch):
    def _pick(self, open_: list[Key], decided: list[Key]) -> Key | None:
        hv_gain = self._hv_gain(decided)
        gains = {k: (hv_gain(k, upper_bound(self.recs[k])), upper_bound(self.recs[k]), -float(self.lat[k]))
                 for k in open_}
        floor = max(self.tol * self._box(), 0.0) if decided else -math.inf
        open_ = [k for k in open_ if gains[k][0] > floor or not decided]
        if not open_:
            return None
        return max(open_, key=lambda k: (self._rung(k), gains[k]))


def run_interval(problem: SearchProblem, max_evaluations: int | None = None, tol: float = 1e-3,
                 depth_tol: float = 5e-3) -> Any:
    """:func:`search.hierarchical.run_hierarchical` under this rule, in an in-memory study."""
    import optuna

    study = optuna.create_study(directions=list(DIRECTIONS))
    IntervalPromotion(problem, study, max_evaluations, tol, depth_tol).run()
    return study
