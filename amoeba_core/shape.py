"""The one currency of the project: a subnet shape, and the geometry it is cut from.

A :class:`SubnetShape` names *which* decoder layers are kept and *how wide* each kept
layer is (fraction of attention heads and MLP channels). A :class:`ModelGeometry` holds
the sizes of a whole model; ``geometry.scaled(shape)`` gives the physical sizes of the
subnet, which is what a deployment flow builds and times.

Width policy (shared by the profiler's random-weight models and Stage 1's physical
extraction, so both describe the same network):

* The residual stream (``hidden``), embeddings and LM head are never narrowed.
* Attention: kept heads are chosen as ``kv' x q'`` (kv groups kept x query heads kept per
  group) closest to ``width * n_heads``, preferring to keep every KV group and drop query
  heads inside groups first (KV cache size and GQA structure stay intact). With
  ``n_kv_heads == n_heads`` (LLaMA2-7B, MHA) this drops whole heads. SmolLM2 has 9 heads in
  3 groups, so attention can only be 9 or 6 (or 3) heads wide: widths 1 and 0.875 keep 9,
  0.75 and 0.625 keep 6. The MLP carries the fine-grained width.
* MLP: ``round(width * intermediate)`` rounded to a multiple of 32 (the GGUF Q8_0/Q4_0 block
  size, so every subnet can be quantised), at least 32.

Separate attention and MLP widths (``d24-a0.667-m0.750``). One ratio ``w`` (``d24-w0.750``)
keeps meaning the policy above: attention to the closest head count, MLP to ``w``. A shape may
instead carry its own attention width ``a`` (fraction of query heads kept) beside the MLP width
``m``. Only fractions the head/KV-group structure realises *exactly* are allowed (see
:meth:`ModelGeometry.attn_widths`): ``a * n_heads`` must be a whole head count ``kv' x q'``
that the same policy picks, i.e. whole query heads dropped inside every KV group first and
whole KV groups only below that (SmolLM2: 9, 6 = 3 groups x 2, 4 = 2 x 2, 3 = 3 x 1, 2, 1 heads
-> a in {1, 0.667, 0.444, 0.333, 0.222, 0.111}). Exact fractions keep the text honest: ``a0.75``
on SmolLM2 would silently run 6 heads, and two keys would name one network. Note that a
one-ratio shape and a separate one can still be the same network (SmolLM2 ``w0.750`` keeps 6
heads and 1152 channels, exactly ``a0.667-m0.750``); their keys differ, their geometry does not.
Both forms reduce to :class:`WidthAxes` (nominal attention ratio, MLP ratio), which is all the
rankings, masks, extraction and profiling models need.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from amoeba_core.errors import AmoebaError

MLP_MULTIPLE = 32
_SHAPE_RE = re.compile(
    r"^d(?P<depth>\d+)-(?:w(?P<width>\d*\.?\d+)|a(?P<attn>\d*\.?\d+)-m(?P<mlp>\d*\.?\d+))"
    r"(?:-(?P<hash>[0-9a-f]{8}))?$"
)


def normalize_width(width: float | str) -> float:
    """Validate a width ratio and round it to 3 decimals (0.875 stays exact).

    Errors name the value as given: a width that rounds to 0.000 is refused here, not after
    a profile or selection has started.
    """
    typed = width.strip() if isinstance(width, str) else width
    try:
        w = float(typed)
    except (TypeError, ValueError):
        raise AmoebaError(f"width must be a number in (0, 1], got {width!r}") from None
    if not 0.0 < w <= 1.0:
        raise AmoebaError(f"width must be in (0, 1], got {typed}")
    if round(w, 3) == 0.0:
        raise AmoebaError(f"width {typed} rounds to 0.000 (widths are kept to 3 decimals; the smallest is 0.001)")
    return round(w, 3)


class WidthAxes(NamedTuple):
    """The nominal (attention, MLP) ratios a shape is cut with.

    ``attn`` goes through :func:`attention_width`, ``mlp`` through :func:`mlp_width`. A one-ratio
    shape ``w`` is ``(w, w)``; a separate shape ``a``/``m`` is ``(a, m)``.
    """

    attn: float
    mlp: float

    @property
    def narrowed(self) -> bool:
        return self.attn < 1.0 or self.mlp < 1.0


WidthKey = float | WidthAxes  # a one-ratio width, or WidthAxes(attn, mlp) of a separate-width shape


def width_key(width: float | WidthAxes, attn_width: float | None = None) -> float | WidthAxes:
    """Hashable key of a width point (latency table rows, predictor fits, search axes): the
    rounded ratio of a one-ratio shape, ``WidthAxes(attn, mlp)`` of a separate one. ``attn_width``
    ``None`` or NaN (a table row of the one-ratio form) means one ratio."""
    if isinstance(width, tuple):
        return WidthAxes(normalize_width(width[0]), normalize_width(width[1]))
    if attn_width is None or (isinstance(attn_width, float) and math.isnan(attn_width)):
        return normalize_width(width)
    return WidthAxes(normalize_width(attn_width), normalize_width(width))


def split_key(key: float | WidthAxes) -> tuple[float, float | None]:
    """(width, attn_width) of a width key: the MLP width and attention width, or (ratio, None)."""
    if isinstance(key, tuple):
        return normalize_width(key[1]), normalize_width(key[0])
    return normalize_width(key), None


def as_axes(width: float | WidthAxes | tuple[float, float]) -> WidthAxes:
    """A one-ratio width ``w`` as ``(w, w)``; a pair as given (both normalised)."""
    if isinstance(width, tuple):
        return WidthAxes(normalize_width(width[0]), normalize_width(width[1]))
    w = normalize_width(width)
    return WidthAxes(w, w)


@dataclass(frozen=True)
class SubnetShape:
    """Kept decoder layers (sorted indices) and a width ratio, or separate attention/MLP widths.

    ``width`` is one ratio for every kept layer (today's policy, see the module docstring).
    With ``attn_width`` set, ``width`` is the MLP width and ``attn_width`` the fraction of
    query heads kept (text ``d24-a0.667-m0.750``). Per-layer widths may come later as an
    optional tuple without changing the text form of uniform shapes.
    """

    layers: tuple[int, ...]
    width: float = 1.0
    attn_width: float | None = None

    def __post_init__(self) -> None:
        layers = tuple(sorted({int(i) for i in self.layers}))
        if not layers:
            raise AmoebaError("a shape must keep at least one layer")
        if layers[0] < 0:
            raise AmoebaError(f"layer indices must be >= 0, got {layers[0]}")
        if len(layers) != len(self.layers):
            raise AmoebaError(f"duplicate layer indices in {self.layers}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "width", normalize_width(self.width))
        if self.attn_width is not None:
            object.__setattr__(self, "attn_width", normalize_width(self.attn_width))

    def _order(self) -> tuple[tuple[int, ...], float, float]:
        return (self.layers, self.width, -1.0 if self.attn_width is None else self.attn_width)

    def __lt__(self, other: SubnetShape) -> bool:
        return self._order() < other._order()

    def __le__(self, other: SubnetShape) -> bool:
        return self._order() <= other._order()

    def __gt__(self, other: SubnetShape) -> bool:
        return self._order() > other._order()

    def __ge__(self, other: SubnetShape) -> bool:
        return self._order() >= other._order()

    @classmethod
    def first(cls, depth: int, width: float = 1.0, attn_width: float | None = None) -> SubnetShape:
        """The first ``depth`` layers: for latency, only depth and width matter."""
        if depth < 1:
            raise AmoebaError(f"depth must be >= 1, got {depth}")
        return cls(tuple(range(depth)), width, attn_width)

    @property
    def axes(self) -> WidthAxes:
        """(attention ratio, MLP ratio) this shape is cut with."""
        return WidthAxes(self.width if self.attn_width is None else self.attn_width, self.width)

    @property
    def mlp_width(self) -> float:
        return self.width

    @property
    def separate(self) -> bool:
        """True for the ``a..-m..`` form (attention width given on its own)."""
        return self.attn_width is not None

    @property
    def narrowed(self) -> bool:
        """Whether any width is below 1 (a strategy's rankings are then needed)."""
        return self.axes.narrowed

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def layer_hash(self) -> str:
        return hashlib.sha1(",".join(map(str, self.layers)).encode()).hexdigest()[:8]

    @property
    def grid_key(self) -> str:
        """Depth and width only: the key of a latency table row."""
        return grid_key(self.depth, self.width, self.attn_width)

    @property
    def key(self) -> str:
        """Stable full text form, e.g. ``d24-w0.750-1a2b3c4d`` or ``d24-a0.667-m0.750-1a2b3c4d``."""
        return f"{self.grid_key}-{self.layer_hash}"

    def __str__(self) -> str:
        return self.key

    def check_fits(self, n_layers: int) -> None:
        if self.layers[-1] >= n_layers:
            raise AmoebaError(
                f"shape {self.grid_key} keeps layer {self.layers[-1]} but the model has {n_layers} layers"
            )


def grid_key(depth: int, width: float | WidthAxes, attn_width: float | None = None) -> str:
    """``d24-w0.750``, or ``d24-a0.667-m0.750`` when an attention width is given (``width`` = MLP;
    ``width`` may also be a :func:`width_key`)."""
    if isinstance(width, tuple):
        width, attn_width = split_key(width)
    if attn_width is None:
        return f"d{int(depth)}-w{normalize_width(width):.3f}"
    return f"d{int(depth)}-a{normalize_width(attn_width):.3f}-m{normalize_width(width):.3f}"


@dataclass(frozen=True)
class ShapeRef:
    """A parsed shape text: depth, width (MLP width in the separate form), attention width
    (``None`` in the one-ratio form) and, when given, the layer hash."""

    depth: int
    width: float
    layer_hash: str | None = None
    attn_width: float | None = None

    @property
    def grid_key(self) -> str:
        return grid_key(self.depth, self.width, self.attn_width)

    @property
    def axes(self) -> WidthAxes:
        return WidthAxes(self.width if self.attn_width is None else self.attn_width, self.width)


def parse_shape(text: str) -> ShapeRef:
    """Parse ``d24-w0.75``, ``d24-a0.667-m0.75`` or either with ``-1a2b3c4d``; a clear error otherwise."""
    m = _SHAPE_RE.match(str(text).strip())
    if not m:
        raise AmoebaError(f"malformed shape {text!r}: expected e.g. 'd24-w0.75' (depth, width in (0, 1]) "
                          "or 'd24-a0.667-m0.75' (depth, attention width, MLP width)")
    depth = int(m["depth"])
    if depth < 1:
        raise AmoebaError(f"shape {text!r}: depth must be >= 1")
    if m["width"] is not None:
        return ShapeRef(depth, normalize_width(float(m["width"])), m["hash"])
    return ShapeRef(depth, normalize_width(float(m["mlp"])), m["hash"], normalize_width(float(m["attn"])))


def _items(text: str | Iterable[Any], what: str) -> list[Any]:
    """Comma-separated items; an empty item (``"1,,0.5"``, a trailing comma) is an error, not skipped."""
    if isinstance(text, str):
        if not text.strip():
            raise AmoebaError(f"no {what} given")
        items: list[Any] = text.split(",")
    else:
        items = list(text)
        if not items:
            raise AmoebaError(f"no {what} given")
    if any(not str(x).strip() for x in items):
        raise AmoebaError(f"empty item in {what} {text!r}: expected comma-separated values such as "
                          + ("'1,0.875,0.75'" if what == "widths" else "'12,18,24'"))
    return items


def parse_widths(text: str | Iterable[float]) -> tuple[float, ...]:
    """``"1,0.875,0.75"`` -> (1.0, 0.875, 0.75); each in (0, 1], distinct at 3 decimals."""
    out: dict[float, Any] = {}
    for x in _items(text, "widths"):
        w = normalize_width(x)
        if w in out:
            raise AmoebaError(f"widths {out[w]} and {str(x).strip()} are the same width {w:.3f} (3 decimals)")
        out[w] = str(x).strip()
    return tuple(out)


def parse_ints(text: str | Iterable[int], what: str = "depths") -> tuple[int, ...]:
    items = _items(text, what)
    try:
        out = tuple(int(str(x).strip()) for x in items)
    except ValueError:
        raise AmoebaError(f"{what} must be comma-separated integers, got {text!r}") from None
    return out


@dataclass(frozen=True)
class AttentionWidth:
    n_kv_heads: int
    heads_per_group: int

    @property
    def n_heads(self) -> int:
        return self.n_kv_heads * self.heads_per_group


def attention_width(n_heads: int, n_kv_heads: int, width: float) -> AttentionWidth:
    """Kept (kv groups, query heads per group) for a width ratio: see the module docstring."""
    width = normalize_width(width)
    hpg = n_heads // n_kv_heads
    target = width * n_heads
    best: tuple[float, int, int] | None = None
    for kv in range(1, n_kv_heads + 1):
        for q in range(1, hpg + 1):
            # closest head count; ties go to more KV groups, then to more heads
            score = (abs(kv * q - target), -kv, -q)
            if best is None or score < best[0]:
                best = (score, kv, q)  # type: ignore[assignment]
    assert best is not None
    return AttentionWidth(best[1], best[2])


def mlp_width(intermediate: int, width: float) -> int:
    width = normalize_width(width)
    if width == 1.0:
        return intermediate
    return max(MLP_MULTIPLE, int(round(width * intermediate / MLP_MULTIPLE)) * MLP_MULTIPLE)


def __getattr__(name: str) -> Any:
    """``ModelGeometry`` lives in :mod:`amoeba_core.geometry`; re-exported here (lazily, no import cycle)."""
    if name == "ModelGeometry":
        from amoeba_core.geometry import ModelGeometry

        return ModelGeometry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
