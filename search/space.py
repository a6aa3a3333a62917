"""The search space: the shapes a Stage 1 strategy makes available (depths x widths).

A strategy fixes, for each depth, which layers are kept (the DP selection); width is a
ratio mapped to heads and MLP channels by the shared width policy in ``amoeba_core.shape``,
so any width in (0, 1] is a valid shape. ``fine_widths`` makes the width axis finer than the
strategy's listed widths (e.g. 0.5..1 in steps of 1/32) for a search worth the name.

Attention x MLP width (``attn_widths``): the width axis becomes every (attention width, MLP
width) pair, shapes ``d24-a0.667-m0.750``; attention widths are limited to the whole head counts
the model's KV-group structure allows (:meth:`amoeba_core.shape.ModelGeometry.attn_widths`).
Search methods index :attr:`SearchSpace.width_axis`, which is ``widths`` without attention widths.

Without a strategy, :meth:`SearchSpace.first_layers` gives the uniform-shrink space that
keeps the first ``depth`` layers (drop-last-layers); it is the baseline the plots compare to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape, WidthAxes, normalize_width, split_key, width_key

if TYPE_CHECKING:
    from amoeba_core.strategy import Strategy

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
    attn_widths: tuple[float, ...] = ()  # given: the width axis is every (attention, MLP width) pair

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
        object.__setattr__(self, "attn_widths", tuple(sorted({normalize_width(a) for a in self.attn_widths})))

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def first_layers(cls, model: str, depths: Iterable[int], widths: Iterable[float]) -> SearchSpace:
        """Keep the first ``depth`` layers (uniform drop-last-layers shrinking)."""
        ds = tuple(int(d) for d in depths)
        return cls(model, ds, tuple(widths), {d: tuple(range(d)) for d in ds}, fingerprint="first-layers")

    @classmethod
    def from_strategy(cls, strategy: Strategy | str | Path, model: str | None = None, widths: Sequence[float] | None = None,
                      depths: Sequence[int] | None = None, attn_widths: Sequence[float] | None = None) -> SearchSpace:
        """From a Stage 1 strategy (object or YAML path); ``widths`` may refine the width axis;
        ``attn_widths`` makes attention width an axis of its own (``widths`` are then MLP widths)."""
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
        geometry = strategy.geometry
        if geometry:  # zero heads/channels at some width: refused before a study is written
            from amoeba_core.shape import ModelGeometry

            g = ModelGeometry(**geometry)
            ws = tuple(g.check_width(w, "mlp" if attn_widths else "both") for w in ws)
            attn_widths = tuple(g.check_width(a, "attn") for a in (attn_widths or ()))
        layers = {d: tuple(strategy.shape(d, 1.0).layers) for d in ds}
        name = model or _strategy_model_name(strategy)
        return cls(name, ds, ws, layers, strategy.model_fingerprint, path,
                   tuple(attn_widths or ()))

    # -- access ---------------------------------------------------------------------
    @property
    def width_axis(self) -> tuple[float | WidthAxes, ...]:
        """The width keys searched: ``widths``, or every ``WidthAxes(attn, mlp)`` pair (by MLP width,
        then attention width, ascending) when the space has attention widths."""
        if not self.attn_widths:
            return self.widths
        return tuple(WidthAxes(a, m) for m in self.widths for a in self.attn_widths)

    @property
    def size(self) -> int:
        return len(self.depths) * len(self.width_axis)

    def shape(self, depth: int, width: float | WidthAxes, attn_width: float | None = None) -> SubnetShape:
        if int(depth) not in self.layers:
            raise AmoebaError(f"depth {depth} not in the space; depths: {list(self.depths)}")
        w, a = split_key(width_key(width, attn_width))
        return SubnetShape(self.layers[int(depth)], w, a)

    def width_index(self, shape: SubnetShape) -> int:
        """Position of the shape's width key on :attr:`width_axis`."""
        return self.width_axis.index(width_key(shape.width, shape.attn_width))

    def shapes(self) -> list[SubnetShape]:
        """Every shape, by depth then width (ascending)."""
        return [self.shape(d, w) for d in self.depths for w in self.width_axis]

    def to_dict(self) -> dict[str, Any]:
        d = {"model": self.model, "fingerprint": self.fingerprint, "strategy": self.strategy_path,
             "depths": list(self.depths), "widths": list(self.widths),
             "layers": {int(d): list(ls) for d, ls in self.layers.items()}}
        if self.attn_widths:
            d["attn_widths"] = list(self.attn_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        layers = {int(k): tuple(v) for k, v in d["layers"].items()}
        return cls(d["model"], tuple(d["depths"]), tuple(d["widths"]), layers, d.get("fingerprint", ""),
                   d.get("strategy"), tuple(d.get("attn_widths") or ()))


def _strategy_model_name(strategy: Strategy) -> str:
    """The latency-table model name: the strategy's source when it is a preset, else its geometry's name."""
    from amoeba_core.shape import ModelGeometry

    if strategy.model_source in ModelGeometry.preset_names():
        return strategy.model_source
    name = strategy.geometry.get("name")
    if isinstance(name, str) and name:
        return name
    raise AmoebaError("the strategy does not name its model geometry; pass --model (e.g. smollm2-135m)")
