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
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, NamedTuple

import yaml

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


@dataclass(frozen=True)
class ModelGeometry:
    """Sizes of a LLaMA-family model (no weights)."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0  # 0: hidden // n_heads
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position: int = 4096
    tie_embeddings: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        for f in ("n_layers", "hidden", "n_heads", "n_kv_heads", "intermediate", "vocab"):
            if int(getattr(self, f)) < 1:
                raise AmoebaError(f"geometry {self.name}: {f} must be >= 1")
        if self.n_heads % self.n_kv_heads:
            raise AmoebaError(
                f"geometry {self.name}: n_heads ({self.n_heads}) must divide by n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim == 0:
            if self.hidden % self.n_heads:
                raise AmoebaError(f"geometry {self.name}: hidden must divide by n_heads")
            object.__setattr__(self, "head_dim", self.hidden // self.n_heads)

    # --- constructors -------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> ModelGeometry:
        presets = _presets()
        if name not in presets:
            raise AmoebaError(f"unknown model {name!r}; known: {', '.join(sorted(presets))}")
        return cls(name=name, **presets[name])

    @classmethod
    def preset_names(cls) -> list[str]:
        return sorted(_presets())

    @classmethod
    def from_hf_config(cls, config: str | Path | dict[str, Any], name: str | None = None) -> ModelGeometry:
        """From an HF ``config.json`` (path, folder or dict)."""
        if not isinstance(config, dict):
            p = Path(config)
            if p.is_dir():
                p = p / "config.json"
            try:
                config = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise AmoebaError(f"cannot read HF config {p}: {e}") from None
            name = name or p.parent.name
        c = config
        try:
            rope = c.get("rope_parameters") or {}
            return cls(
                n_layers=int(c["num_hidden_layers"]),
                hidden=int(c["hidden_size"]),
                n_heads=int(c["num_attention_heads"]),
                n_kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
                intermediate=int(c["intermediate_size"]),
                vocab=int(c["vocab_size"]),
                head_dim=int(c.get("head_dim") or 0),
                rms_eps=float(c.get("rms_norm_eps", 1e-5)),
                rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
                max_position=int(c.get("max_position_embeddings", 4096)),
                tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                name=name or "hf",
            )
        except KeyError as e:
            raise AmoebaError(f"HF config is missing {e}") from None

    @classmethod
    def from_gguf(cls, path: str | Path, name: str | None = None) -> ModelGeometry:
        """From a LLaMA-architecture GGUF header (reads metadata only)."""
        import gguf  # noqa: PLC0415  (optional heavy import)

        p = Path(path)
        try:
            r = gguf.GGUFReader(str(p))
        except Exception as e:  # noqa: BLE001 - gguf raises bare ValueErrors/struct errors
            raise AmoebaError(f"cannot read GGUF {p}: {e}") from None

        def val(key: str, default: Any = None) -> Any:
            f = r.fields.get(key)
            if f is None:
                if default is None:
                    raise AmoebaError(f"GGUF {p.name}: missing key {key}")
                return default
            return f.contents()

        arch = val("general.architecture")
        if arch != "llama":
            raise AmoebaError(f"GGUF {p.name}: architecture {arch!r} is not 'llama'")
        tensors = {t.name for t in r.tensors}
        vocab_field = r.fields.get("tokenizer.ggml.tokens")
        vocab = int(val("llama.vocab_size", 0)) or (len(vocab_field.data) if vocab_field else 0)
        n_heads = int(val("llama.attention.head_count"))
        hidden = int(val("llama.embedding_length"))
        return cls(
            n_layers=int(val("llama.block_count")),
            hidden=hidden,
            n_heads=n_heads,
            n_kv_heads=int(val("llama.attention.head_count_kv", n_heads)),
            intermediate=int(val("llama.feed_forward_length")),
            vocab=vocab,
            head_dim=int(val("llama.rope.dimension_count", hidden // n_heads)),
            # GGUF stores these as float32: round back to the decimal they were written from
            rms_eps=_f32(val("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=_f32(val("llama.rope.freq_base", 10000.0)),
            max_position=int(val("llama.context_length", 4096)),
            tie_embeddings="output.weight" not in tensors,
            name=name or p.stem,
        )

    @classmethod
    def resolve(cls, model: str | Path) -> ModelGeometry:
        """A preset name, an HF folder/config.json, or a GGUF file."""
        s = str(model)
        if s in _presets():
            return cls.preset(s)
        p = Path(s)
        if p.suffix == ".gguf" and p.is_file():
            return cls.from_gguf(p)
        if p.is_dir() or p.name == "config.json":
            return cls.from_hf_config(p)
        raise AmoebaError(
            f"unknown model {s!r}: not a preset ({', '.join(sorted(_presets()))}), GGUF file or HF folder"
        )

    # --- derived ------------------------------------------------------------------
    def scaled(self, shape: SubnetShape) -> ModelGeometry:
        """Physical sizes of ``shape`` cut from this geometry (see the width policy)."""
        shape.check_fits(self.n_layers)
        return self.scaled_dims(shape.depth, shape.width, shape.attn_width)

    def scaled_dims(self, depth: int, width: float | WidthAxes, attn_width: float | None = None) -> ModelGeometry:
        """Physical sizes of the first ``depth`` layers at ``width`` (one ratio), or at MLP width
        ``width`` and attention width ``attn_width`` (an exact fraction of heads, see
        :meth:`attn_widths`). ``width`` may also be a :func:`width_key` (``WidthAxes`` = separate)."""
        if isinstance(width, tuple):
            width, attn_width = split_key(width)
        if not 1 <= depth <= self.n_layers:
            raise AmoebaError(f"depth {depth} outside 1..{self.n_layers} for {self.name}")
        if attn_width is None:
            att = attention_width(self.n_heads, self.n_kv_heads, width)
        else:
            att = attention_width(self.n_heads, self.n_kv_heads, self.check_width(attn_width, "attn"))
        return replace(
            self,
            n_layers=depth,
            n_heads=att.n_heads,
            n_kv_heads=att.n_kv_heads,
            intermediate=mlp_width(self.intermediate, width),
            head_dim=self.head_dim,
            name=f"{self.name}:{grid_key(depth, width, attn_width)}",
        )

    def attn_widths(self) -> tuple[float, ...]:
        """Attention widths this geometry realises exactly, widest first (3 decimals).

        A head count ``h`` is allowed when the shared policy keeps exactly ``h`` heads for
        ``h / n_heads`` (``kv' x q'`` with every KV group keeping the same number of heads):
        query heads are dropped inside every group before whole groups go.
        """
        out: dict[float, None] = {}
        for h in range(self.n_heads, 0, -1):
            a = round(h / self.n_heads, 3)
            if a > 0 and attention_width(self.n_heads, self.n_kv_heads, a).n_heads == h:
                out.setdefault(a)
        return tuple(out)

    def attn_widths_all_groups(self) -> tuple[float, ...]:
        """The attention widths that keep every KV group (whole query heads dropped per group):
        the search's default attention axis (KV cache and GQA layout unchanged)."""
        hpg = self.n_heads // self.n_kv_heads
        if hpg == 1:  # MHA: every head is its own group, so whole heads are the only unit
            return self.attn_widths()
        return tuple(round(q / hpg, 3) for q in range(hpg, 0, -1))

    def check_shape(self, shape: SubnetShape) -> None:
        """Errors if ``shape`` does not fit this geometry (layers, widths)."""
        shape.check_fits(self.n_layers)
        if shape.attn_width is None:
            self.check_width(shape.width)
        else:
            self.check_width(shape.width, "mlp")
            self.check_width(shape.attn_width, "attn")

    def check_width(self, width: float | str, part: Literal["both", "attn", "mlp"] = "both") -> float:
        """The normalised width, or an error if its attention or MLP part rounds to zero heads/channels here.

        (``attention_width``/``mlp_width`` would silently keep one head / 32 channels instead.)
        ``part="attn"`` checks an attention width of the separate form: it must also be a
        fraction of heads this geometry realises exactly (:meth:`attn_widths`); ``"mlp"`` checks
        an MLP width only.
        """
        w = normalize_width(width)
        typed = width.strip() if isinstance(width, str) else width
        if part == "attn":
            allowed = self.attn_widths()
            if w not in allowed:
                n = attention_width(self.n_heads, self.n_kv_heads, w).n_heads if w * self.n_heads >= 0.5 else 0
                raise AmoebaError(
                    f"attention width {typed} is not a whole number of heads {self.name} can keep "
                    f"({w * self.n_heads:.2f} of {self.n_heads}{f'; closest is {n}' if n else ''}); allowed: "
                    + ", ".join(f"{a:.3f}" for a in allowed))
            return w
        if w * self.n_heads < 0.5 and part == "both":
            least = math.ceil(500 / self.n_heads) / 1000
            raise AmoebaError(f"width {typed} keeps {w * self.n_heads:.2f} of the {self.n_heads} attention heads of "
                              f"{self.name}, which rounds to zero heads; the smallest width is {least:.3f}")
        if w < 1.0 and int(round(w * self.intermediate / MLP_MULTIPLE)) == 0:  # mlp_width's rounding
            least = math.ceil(1000 * MLP_MULTIPLE / 2 / self.intermediate) / 1000
            while int(round(least * self.intermediate / MLP_MULTIPLE)) == 0:
                least = round(least + 0.001, 3)
            raise AmoebaError(f"width {typed} keeps {w * self.intermediate:.1f} of the {self.intermediate} MLP "
                              f"channels of {self.name}, which rounds to zero blocks of {MLP_MULTIPLE}; the smallest "
                              f"width is {least:.3f}")
        return w

    def layer_params(self) -> int:
        """Weights of one decoder layer (attention, MLP, two norms)."""
        q = self.hidden * self.n_heads * self.head_dim
        kv = 2 * self.hidden * self.n_kv_heads * self.head_dim
        o = self.n_heads * self.head_dim * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return q + kv + o + mlp + 2 * self.hidden

    def embedding_params(self) -> int:
        """Embedding + LM head (shared when tied) + final norm."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2) + self.hidden

    def n_params(self) -> int:
        return self.n_layers * self.layer_params() + self.embedding_params()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def fingerprint(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k != "name"}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _f32(x: Any) -> float:
    return float(f"{float(x):.7g}")


@cache
def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("amoeba_core").joinpath("geometries.yaml").read_text()
    return yaml.safe_load(text)
