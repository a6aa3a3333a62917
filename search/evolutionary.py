"""Optuna multi-objective search: NSGA-II (default), TPE, or random sampling (the baseline).

Each trial suggests ``depth_i`` and ``width_i`` (see :mod:`search.problem`), evaluates the shape's
accuracy (cached, so a repeated suggestion costs nothing) and latency, and returns
``(accuracy, latency_ms)``. With a latency budget each trial sets the Optuna constraint
``latency - budget`` (``Trial.set_constraint``), so samplers never prefer an over-budget shape
(hard constraint). Samplers are seeded; with one process
the same seed gives the same sequence of shapes. Several processes may call :func:`run_optuna`
on one study in a shared storage (their trials interleave; every trial is recorded once).
"""

from __future__ import annotations

import logging
from typing import Any

from amoeba_core.errors import AmoebaError
from search.problem import DIRECTIONS, SearchProblem

log = logging.getLogger(__name__)

METHODS = ("nsga2", "tpe", "random")


def make_sampler(method: str, seed: int | None, population_size: int = 16, n_startup_trials: int = 10) -> Any:
    import optuna

    if method == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise AmoebaError(f"unknown method {method!r}; known: hierarchical, {', '.join(METHODS)}")


def run_optuna(problem: SearchProblem, method: str = "nsga2", n_trials: int = 100, seed: int | None = 0,
               storage: Any = None, study_name: str | None = None, max_evaluations: int | None = None,
               population_size: int = 16, n_startup_trials: int = 10, callbacks: list[Any] | None = None) -> Any:
    """Run ``n_trials`` trials (or stop after ``max_evaluations`` distinct shapes); returns the study."""
    import optuna

    sampler = make_sampler(method, seed, population_size, n_startup_trials)
    study = optuna.create_study(storage=storage, study_name=study_name, directions=list(DIRECTIONS),
                                sampler=sampler, load_if_exists=True)
    study.set_user_attr("space", problem.space.to_dict())
    study.set_user_attr("method", method)
    if problem.budget_ms is not None:
        study.set_user_attr("budget_ms", problem.budget_ms)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        shape = problem.shape_of({"depth_i": trial.suggest_int("depth_i", 0, len(problem.space.depths) - 1),
                                  "width_i": trial.suggest_int("width_i", 0, len(problem.space.width_axis) - 1)})
        ev = problem.evaluate(shape)
        for k, v in problem.user_attrs(ev).items():
            trial.set_user_attr(k, v)
        for k, c in (problem.constraints(ev) or {}).items():
            trial.set_constraint(k, c)
        return ev.accuracy, ev.latency_ms

    callbacks = list(callbacks or [])
    if max_evaluations is not None:
        def stop(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
            if len(problem.history) >= max_evaluations:
                study.stop()
        callbacks.append(stop)
    study.optimize(objective, n_trials=n_trials, callbacks=callbacks, gc_after_trial=False)
    return study
