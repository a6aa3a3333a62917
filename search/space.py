"""The search space: the shapes a Stage 1 strategy makes available (depths x widths).

A strategy fixes, for each depth, which layers are kept (the DP selection); width is a
ratio mapped to heads and MLP channels by the shared width policy in ``amoeba_core.shape``,
so any width in (0, 1] is a valid shape. ``fine_widths`` makes the width axis finer than the
strategy's listed widths (e.g. 0.5..1 in steps of 1/32) for a search worth the name.

Without a strategy, :meth:`SearchSpace.first_layers` gives the uniform-shrink space that
keeps the first ``depth`` layers (drop-last-layers); it is the baseline the plots compare to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape, normalize_width

log = logging.getLogger(__name__)


def fine_widths(lo: float = 0.5, hi: float = 1.0, step: float = 1 / 32) -> tuple[float, ...]:
    """Widths from ``lo`` to ``hi`` inclusive (descending) in ``step`` increments."""
    if not 0 < lo <= hi <= 1 or step <= 0:
        raise AmoebaError(f"bad width range lo={lo} hi={hi} step={step}: need 0 < lo <= hi <= 1, step > 0")
    n = int(round((hi - lo) / step))
    out = {normalize_width(hi - i * step) for i in range(n + 1) if hi - i * step >= lo - 1e-9}
    return tuple(sorted(out, reverse=True))


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """Depths x widths of one model; ``layers[depth]`` are the kept layer indices."""

    model: str
    depths: tuple[int, ...]
    widths: tuple[float, ...]
    layers: dict[int, tuple[int, ...]] = field(default_factory=dict)
    fingerprint: str = ""
    strategy_path: str | None = None

    def __post_init__(self) -> None:
        depths = tuple(sorted({int(d) for d in self.depths}))
        widths = tuple(sorted({normalize_width(w) for w in self.widths}))
        if not depths or not widths:
            raise AmoebaError("a search space needs at least one depth and one width")
        missing = [d for d in depths if d not in self.layers]
        if missing:
            raise AmoebaError(f"no layer set for depths {missing}")
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "widths", widths)

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def first_layers(cls, model: str, depths: Iterable[int], widths: Iterable[float]) -> SearchSpace:
        """Keep the first ``depth`` layers (uniform drop-last-layers shrinking)."""
        ds = tuple(int(d) for d in depths)
        return cls(model, ds, tuple(widths), {d: tuple(range(d)) for d in ds}, fingerprint="first-layers")

    @classmethod
    def from_strategy(cls, strategy: Any, model: str | None = None, widths: Sequence[float] | None = None,
                      depths: Sequence[int] | None = None) -> SearchSpace:
        """From a Stage 1 strategy (object or YAML path); ``widths`` may refine the width axis."""
        path: str | None = None
        if isinstance(strategy, (str, Path)):
            from amoeba_core.strategy import Strategy

            path = str(strategy)
            if not Path(path).is_file():
                raise AmoebaError(f"strategy file not found: {path} (make one with `amoeba select`)")
            strategy = Strategy.load(path)
        ds = tuple(int(d) for d in (depths or strategy.depths))
        unknown = sorted(set(ds) - set(int(d) for d in strategy.depths))
        if unknown:
            raise AmoebaError(f"depths {unknown} not in the strategy; it has {list(strategy.depths)}")
        ws = tuple(widths) if widths else tuple(strategy.widths)
        geometry = getattr(strategy, "geometry", None)
        if geometry:  # zero heads/channels at some width: refused before a study is written
            from amoeba_core.shape import ModelGeometry

            g = ModelGeometry(**geometry)
            ws = tuple(g.check_width(w) for w in ws)
        layers = {d: tuple(strategy.shape(d, 1.0).layers) for d in ds}
        name = model or _strategy_model_name(strategy)
        return cls(name, ds, ws, layers, str(getattr(strategy, "model_fingerprint", "") or ""), path)

    # -- access ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.depths) * len(self.widths)

    def shape(self, depth: int, width: float) -> SubnetShape:
        if int(depth) not in self.layers:
            raise AmoebaError(f"depth {depth} not in the space; depths: {list(self.depths)}")
        return SubnetShape(self.layers[int(depth)], width)

    def shapes(self) -> list[SubnetShape]:
        """Every shape, by depth then width (ascending)."""
        return [self.shape(d, w) for d in self.depths for w in self.widths]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "fingerprint": self.fingerprint, "strategy": self.strategy_path,
                "depths": list(self.depths), "widths": list(self.widths),
                "layers": {int(d): list(ls) for d, ls in self.layers.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        layers = {int(k): tuple(v) for k, v in d["layers"].items()}
        return cls(d["model"], tuple(d["depths"]), tuple(d["widths"]), layers, d.get("fingerprint", ""),
                   d.get("strategy"))


def _strategy_model_name(strategy: Any) -> str:
    """The latency-table model name: the strategy's source when it is a preset, else its geometry's name."""
    from amoeba_core.shape import ModelGeometry

    source = str(getattr(strategy, "model_source", "") or "")
    if source in ModelGeometry.preset_names():
        return source
    geometry = getattr(strategy, "geometry", None)
    name = geometry.get("name") if isinstance(geometry, dict) else getattr(geometry, "name", None)
    if isinstance(name, str) and name:
        return name
    raise AmoebaError("the strategy does not name its model geometry; pass --model (e.g. smollm2-135m)")
