"""A search problem: a space, its two objectives, an optional latency budget, and the Optuna study
that records every evaluated shape (so a study opens in optuna-dashboard as it is).

Trials use two integer parameters, ``depth_i`` and ``width_i`` (indices into the space's
sorted depths and widths, so samplers see the order), and carry the readable shape in user
attributes. Objective values are ``(accuracy, latency_ms)``, directions maximise / minimise.
With a budget, every trial carries the Optuna constraint ``latency_budget = latency - budget``
(``Trial.set_constraint``; feasible when <= 0), which NSGA-II, TPE and ``study.best_trials``
honour; the search methods never return an over-budget shape as feasible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from amoeba_core.shape import SubnetShape
from search.objectives import AccuracyRecord, ShapeLatency
from search.space import SearchSpace

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Evaluation:
    shape: SubnetShape
    accuracy: float
    latency_ms: float
    latency_source: str
    ppl: float | None = None

    @property
    def key(self) -> str:
        return self.shape.key


class SearchProblem:
    """Space + accuracy + latency (+ budget). ``history`` lists distinct evaluated shapes in order."""

    def __init__(self, space: SearchSpace, accuracy: Callable[[SubnetShape], AccuracyRecord | float],
                 latency: Callable[[SubnetShape], ShapeLatency], budget_ms: float | None = None) -> None:
        self.space, self.accuracy_fn, self.latency_fn, self.budget_ms = space, accuracy, latency, budget_ms
        self.history: list[Evaluation] = []
        self._seen: dict[str, Evaluation] = {}

    # -- objectives -----------------------------------------------------------------
    def latency(self, shape: SubnetShape) -> ShapeLatency:
        return self.latency_fn(shape)

    def feasible(self, shape: SubnetShape) -> bool:
        return self.budget_ms is None or self.latency(shape).ms <= self.budget_ms

    def evaluate(self, shape: SubnetShape) -> Evaluation:
        hit = self._seen.get(shape.key)
        if hit is not None:
            return hit
        acc = self.accuracy_fn(shape)
        lat = self.latency(shape)
        if isinstance(acc, (int, float)):
            ev = Evaluation(shape, float(acc), lat.ms, lat.source)
        else:
            ev = Evaluation(shape, float(acc.top1_acc), lat.ms, lat.source, acc.ppl)
        self._seen[shape.key] = ev
        self.history.append(ev)
        return ev

    # -- Optuna encoding ------------------------------------------------------------
    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {"depth_i": IntDistribution(0, len(self.space.depths) - 1),
                "width_i": IntDistribution(0, len(self.space.widths) - 1)}

    def shape_of(self, params: dict[str, Any]) -> SubnetShape:
        return self.space.shape(self.space.depths[int(params["depth_i"])], self.space.widths[int(params["width_i"])])

    def params_of(self, shape: SubnetShape) -> dict[str, int]:
        return {"depth_i": self.space.depths.index(shape.depth), "width_i": self.space.widths.index(shape.width)}

    def user_attrs(self, ev: Evaluation) -> dict[str, Any]:
        attrs: dict[str, Any] = {"shape": ev.shape.key, "depth": ev.shape.depth, "width": ev.shape.width,
                                 "latency_source": ev.latency_source, "ppl": ev.ppl}
        return attrs

    def constraints(self, ev: Evaluation) -> dict[str, float] | None:
        return None if self.budget_ms is None else {"latency_budget": ev.latency_ms - self.budget_ms}

    def record(self, study: Any, ev: Evaluation) -> None:
        """Add an evaluation made outside ``study.optimize`` (hierarchical search) as a finished trial."""
        import optuna

        study.add_trial(optuna.trial.create_trial(params=self.params_of(ev.shape), distributions=self.distributions(),
                                                  values=[ev.accuracy, ev.latency_ms], user_attrs=self.user_attrs(ev),
                                                  constraints=self.constraints(ev)))

