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
from search.objectives import AccuracyRecord, MultiFidelityAccuracy
from profiler.lookup import LatencyEstimate
from search.space import SearchSpace

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Evaluation:
    """A scored shape, the one result type of the search: the shape, its latency estimate (with the
    profiler's interval and extrapolation flag) and its accuracy score (with its 90% interval over windows;
    None when the accuracy function gives a bare number)."""

    shape: SubnetShape
    latency: LatencyEstimate
    accuracy: float
    score: AccuracyRecord | None = None

    @property
    def key(self) -> str:
        return self.shape.key

    @property
    def latency_ms(self) -> float:
        return self.latency.ms

    @property
    def latency_source(self) -> str:
        return self.latency.source

    @property
    def ppl(self) -> float | None:
        return None if self.score is None else self.score.ppl

    @property
    def accuracy_lo(self) -> float | None:
        return None if self.score is None else self.score.top1_lo

    @property
    def accuracy_hi(self) -> float | None:
        return None if self.score is None else self.score.top1_hi

    @property
    def windows(self) -> int | None:
        """The fidelity it was scored at."""
        return None if self.score is None else self.score.windows


class SearchProblem:
    """Space + accuracy + latency (+ budget). ``history`` lists distinct full-budget evaluations in order.

    Cost is counted in evaluated tokens, whether a score was computed or read from the cache (so a
    benchmark can replay methods against one exhaustive pass): ``tokens`` is the running total and
    ``events`` lists ``(tokens so far, Evaluation or None)`` per scoring step (None: a screen at
    a lower fidelity, which adds cost but no decided point), ``steps`` the shape, the rung it reached
    (0 without fidelity rungs) and the tokens of each of those steps. With a multi-fidelity accuracy
    (:class:`search.objectives.MultiFidelityAccuracy`), :meth:`screen` scores a shape at a lower
    rung; promoting it later costs only the windows it has not seen.
    """

    def __init__(self, space: SearchSpace, accuracy: Callable[[SubnetShape], AccuracyRecord | float],
                 latency: Callable[[SubnetShape], LatencyEstimate], budget_ms: float | None = None) -> None:
        self.space, self.accuracy_fn, self.latency_fn, self.budget_ms = space, accuracy, latency, budget_ms
        self.history: list[Evaluation] = []
        self._seen: dict[str, Evaluation] = {}
        self.tokens = 0
        self.events: list[tuple[int, Evaluation | None]] = []
        self.steps: list[tuple[str, int, int]] = []  # per event: (shape key, rung reached, tokens it cost)
        self.rung_of: dict[str, int] = {}  # multi-fidelity: highest rung scored per shape key
        self.screens: dict[str, AccuracyRecord] = {}  # multi-fidelity: latest record per shape key

    @property
    def fidelity(self) -> MultiFidelityAccuracy | None:
        """The multi-fidelity accuracy, or None for a single-fidelity problem."""
        fn = self.accuracy_fn
        return fn if isinstance(fn, MultiFidelityAccuracy) else None

    # -- objectives -----------------------------------------------------------------
    def latency(self, shape: SubnetShape) -> LatencyEstimate:
        return self.latency_fn(shape)

    def feasible(self, shape: SubnetShape) -> bool:
        return self.budget_ms is None or self.latency(shape).ms <= self.budget_ms

    def evaluate(self, shape: SubnetShape) -> Evaluation:
        """The shape at the full evaluation budget (counted once per shape)."""
        hit = self._seen.get(shape.key)
        if hit is not None:
            return hit
        mf = self.fidelity
        if mf is not None:
            top = len(mf.rungs) - 1
            cost = mf.cost(self.rung_of.get(shape.key), top)
            acc = mf.score(shape, top)
            self.rung_of[shape.key] = top
            self.screens[shape.key] = acc
        else:
            acc = self.accuracy_fn(shape)
            cost = 0 if isinstance(acc, (int, float)) else int(acc.tokens or 0)
        ev = self._evaluation(shape, acc)
        self._seen[shape.key] = ev
        self.history.append(ev)
        self.tokens += cost
        self.events.append((self.tokens, ev))
        self.steps.append((shape.key, len(mf.rungs) - 1 if mf is not None else 0, cost))
        return ev

    def screen(self, shape: SubnetShape, rung: int) -> AccuracyRecord:
        """Score ``shape`` at fidelity rung ``rung`` (multi-fidelity only); the top rung is :meth:`evaluate`."""
        mf = self.fidelity
        if mf is None:
            raise TypeError("screen() needs a multi-fidelity accuracy")
        rung %= len(mf.rungs)
        if rung == len(mf.rungs) - 1:
            self.evaluate(shape)
            return self.screens[shape.key]
        have = self.rung_of.get(shape.key)
        if have is not None and have >= rung:
            return self.screens[shape.key]
        rec = mf.score(shape, rung)
        cost = mf.cost(have, rung)
        self.tokens += cost
        self.rung_of[shape.key] = rung
        self.screens[shape.key] = rec
        self.events.append((self.tokens, None))
        self.steps.append((shape.key, rung, cost))
        return rec

    def _evaluation(self, shape: SubnetShape, acc: AccuracyRecord | float) -> Evaluation:
        lat = self.latency(shape)
        if isinstance(acc, (int, float)):
            return Evaluation(shape, lat, float(acc))
        return Evaluation(shape, lat, float(acc.top1_acc), acc)

    # -- Optuna encoding ------------------------------------------------------------
    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {"depth_i": IntDistribution(0, len(self.space.depths) - 1),
                "width_i": IntDistribution(0, len(self.space.width_axis) - 1)}

    def shape_of(self, params: dict[str, Any]) -> SubnetShape:
        return self.space.shape(self.space.depths[int(params["depth_i"])], self.space.width_axis[int(params["width_i"])])

    def params_of(self, shape: SubnetShape) -> dict[str, int]:
        return {"depth_i": self.space.depths.index(shape.depth), "width_i": self.space.width_index(shape)}

    def user_attrs(self, ev: Evaluation) -> dict[str, Any]:
        attrs: dict[str, Any] = {"shape": ev.shape.key, "depth": ev.shape.depth, "width": ev.shape.width,
                                 "latency_source": ev.latency_source, "ppl": ev.ppl}
        if ev.shape.attn_width is not None:
            attrs["attn_width"] = ev.shape.attn_width
        optional = {"accuracy_lo": ev.accuracy_lo, "accuracy_hi": ev.accuracy_hi, "windows": ev.windows,
                    "latency_lo": ev.latency.lo_ms, "latency_hi": ev.latency.hi_ms,
                    "extrapolated": ev.latency.extrapolated}
        attrs.update({k: v for k, v in optional.items() if v is not None})
        fid = self.fidelity_attrs(ev.shape)
        if fid:
            attrs["fidelities"] = fid
        return attrs

    def fidelity_attrs(self, shape: SubnetShape) -> list[dict[str, Any]]:
        """Every rung's score of ``shape`` with its interval (multi-fidelity only; read from the table)."""
        mf = self.fidelity
        if mf is None:
            return []
        out = []
        for r, n in enumerate(mf.rungs[: self.rung_of.get(shape.key, -1) + 1]):
            rec = mf.cached(shape, r)
            if rec is not None:
                out.append({"windows": n, "tokens": rec.tokens, "top1": rec.top1_acc, "top1_lo": rec.top1_lo,
                            "top1_hi": rec.top1_hi, "ppl": rec.ppl})
        return out

    def constraints(self, ev: Evaluation) -> dict[str, float] | None:
        return None if self.budget_ms is None else {"latency_budget": ev.latency_ms - self.budget_ms}

    def record(self, study: Any, ev: Evaluation) -> None:
        """Add an evaluation made outside ``study.optimize`` (hierarchical search) as a finished trial;
        its lower-fidelity scores are the trial's intermediate values (step = windows)."""
        import optuna

        inter = {f["windows"]: f["top1"] for f in self.fidelity_attrs(ev.shape)[:-1]}
        study.add_trial(optuna.trial.create_trial(params=self.params_of(ev.shape), distributions=self.distributions(),
                                                  values=[ev.accuracy, ev.latency_ms], user_attrs=self.user_attrs(ev),
                                                  constraints=self.constraints(ev), intermediate_values=inter or None))

    def record_screened(self, study: Any, shape: SubnetShape) -> None:
        """A shape scored only at lower fidelities: a PRUNED trial (no objective values) whose
        intermediate values and user attributes keep every rung's score and interval."""
        import optuna

        fid = self.fidelity_attrs(shape)
        lat = self.latency(shape)
        attrs = {"shape": shape.key, "depth": shape.depth, "width": shape.width, "latency_ms": lat.ms,
                 "latency_source": lat.source, "fidelities": fid, "screened_only": True}
        study.add_trial(optuna.trial.create_trial(params=self.params_of(shape), distributions=self.distributions(),
                                                  state=optuna.trial.TrialState.PRUNED, user_attrs=attrs,
                                                  intermediate_values={f["windows"]: f["top1"] for f in fid} or None))

