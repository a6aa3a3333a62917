"""Decision side: search the accuracy-latency front, answer best-shape queries, serve and plot them.

The public API is importable from here (loaded lazily so ``amoeba --help`` stays fast)::

    from search import SearchSpace, SearchProblem, run_hierarchical, run_optuna, QueryIndex, open_storage
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchSpace": "search.space", "fine_widths": "search.space",
    "AccuracyObjective": "search.objectives", "AccuracyTable": "search.objectives",
    "AccuracyRecord": "search.objectives", "LatencyObjective": "search.latency", "LatencyEstimate": "profiler.lookup",
    "SearchProblem": "search.problem", "Evaluation": "search.problem",
    "run_hierarchical": "search.hierarchical", "run_optuna": "search.evolutionary",
    "open_storage": "search.store", "storage_url": "search.store",
    "pareto_mask": "search.pareto", "pareto_indices": "search.pareto", "hypervolume": "search.pareto",
    "QueryIndex": "search.query", "Answer": "search.query", "Point": "search.query",
    "create_app": "search.service", "plot_fronts": "search.plot", "front_data": "search.plot",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
