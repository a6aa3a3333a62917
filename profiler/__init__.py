"""Device side: deployment flows, timing protocol, latency tables, predictor, roofline.

The public API is importable from here (loaded lazily so ``amoeba --help`` stays fast)::

    from profiler import latency_ms, LatencyModel, LatencyEstimate, list_tables, list_devices
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "latency_ms": "profiler.lookup",
    "LatencyModel": "profiler.lookup",
    "LatencyEstimate": "profiler.lookup",
    "TableInfo": "profiler.lookup",
    "list_tables": "profiler.lookup",
    "list_devices": "profiler.lookup",
    "LatencyTable": "profiler.table",
    "LatencyPredictor": "profiler.predict",
    "LatencyStats": "profiler.measure",
    "measure": "profiler.measure",
    "DeviceSpec": "profiler.device",
    "load_device": "profiler.device",
    "floor_ms": "profiler.roofline",
    "roofline": "profiler.roofline",
    "ProfilePlan": "profiler.plan",
    "make_plan": "profiler.plan",
    "run_profile": "profiler.plan",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")
