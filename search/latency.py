"""The latency objective: a shape's latency on one device/flow from the profiler's tables.

``LatencyObjective(device, flow, model, phase)`` answers :class:`profiler.lookup.LatencyEstimate`
(the one latency-estimate type from the profiler to the service): ``decode`` and ``prefill`` from
one table, ``e2e`` as prefill + ``gen_len`` decode steps (the parts' values and bounds added; a
conservative interval).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape, WidthAxes, grid_key, width_key
from profiler.lookup import LatencyEstimate

log = logging.getLogger(__name__)

PHASES = ("decode", "prefill", "e2e")
_SOURCE_RANK = {"measured": 0, "per-layer": 1, "transferred": 2, "predicted": 3, "roofline": 4}  # lookup's preference order


class LatencyObjective:
    """Latency of a shape on one device/flow from the profiler's tables (cached models)."""

    def __init__(self, device: str, flow: str, model: str, phase: str = "decode", prompt_len: int | None = None,
                 gen_len: int = 128, root: Path | None = None, variant: str | None = None) -> None:
        from profiler.lookup import LatencyModel

        if phase not in PHASES:
            raise AmoebaError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        if gen_len < 1:
            raise AmoebaError(f"gen_len must be >= 1, got {gen_len}")
        self.device, self.flow, self.model, self.phase, self.gen_len = device, flow, model, phase, int(gen_len)
        self.parts: list[tuple[Any, int]] = []  # (LatencyModel, multiplier)
        if phase in ("decode", "prefill"):
            self.parts.append((LatencyModel.open(device, flow, model, phase, prompt_len, variant, root=root), 1))
        else:
            pre = LatencyModel.open(device, flow, model, "prefill", prompt_len, variant, root=root)
            try:
                dec = LatencyModel.open(device, flow, model, "decode", pre.prompt_len, pre.variant, root=root)
            except AmoebaError:
                dec = LatencyModel.open(device, flow, model, "decode", None, pre.variant, root=root)
                log.info("no decode rows at context %d; using decode at context %d", pre.prompt_len, dec.prompt_len)
            self.parts += [(pre, 1), (dec, self.gen_len)]
        self.prompt_len = self.parts[0][0].prompt_len
        self.variant: str | None = self.parts[0][0].variant
        self._cache: dict[tuple[int, float], LatencyEstimate] = {}

    def __call__(self, shape: SubnetShape) -> LatencyEstimate:
        return self.at(shape.depth, width_key(shape.width, shape.attn_width))

    def at(self, depth: int, width: float | WidthAxes) -> LatencyEstimate:
        """Latency of (depth, width); ``width`` may be a width key (``WidthAxes``: separate attention/MLP)."""
        width = width_key(width)
        key = (int(depth), width)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        ests = [(m.estimate(depth, width), k) for m, k in self.parts]
        ms = sum(e.ms * k for e, k in ests)
        source = max((e.source for e, _ in ests), key=lambda s: _SOURCE_RANK.get(s, 9))
        if not ms > 0:
            raise AmoebaError(f"{self.device}/{self.flow}/{self.model} gives a non-positive {self.phase} latency "
                              f"({ms:.4g} ms, {source}) for {grid_key(depth, width)}: the shape is outside what the "
                              "table's predictor can extrapolate; profile widths/depths that cover it")
        def total(vals: list[float | None]) -> float | None:
            return sum(v * k for v, (_, k) in zip(vals, ests)) if all(v is not None for v in vals) else None

        out = LatencyEstimate(float(ms), source, total([e.measured_ms for e, _ in ests]),
                              total([e.predicted_ms for e, _ in ests]), total([e.roofline_ms for e, _ in ests]),
                              total([e.lo_ms for e, _ in ests]), total([e.hi_ms for e, _ in ests]),
                              any(e.extrapolated for e, _ in ests))
        self._cache[key] = out
        return out
