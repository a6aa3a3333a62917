"""The sizes and architecture family of a whole model (no weights): :class:`ModelGeometry`.

Read from an HF ``config.json``, a GGUF header or a preset (``geometries.yaml``). Besides the
sizes it carries the architecture family fields transformers' own classes need: ``model_type``
(llama, mistral, qwen2, qwen3), ``attention_bias`` (Qwen2/2.5 q/k/v biases), ``qk_norm`` (Qwen3
per-head RMSNorm of q and k), ``rope_scaling`` (e.g. LLaMA-3.1's ``llama3`` scaling) and
``sliding_window``. ``ModelGeometry.scaled(shape)`` gives the physical sizes of a subnet (the
width policy is in :mod:`amoeba_core.shape`). The fingerprint of a plain LLaMA geometry is the
same as before these fields existed (they enter it only when they differ from LLaMA's).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import (
    MLP_MULTIPLE,
    SubnetShape,
    WidthAxes,
    attention_width,
    grid_key,
    mlp_width,
    normalize_width,
    split_key,
)

# model_type -> (transformers config class, causal-LM class, llama.cpp GGUF architecture)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "llama"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "llama"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "qwen3"),
}
_FAMILY_DEFAULTS: dict[str, Any] = {"model_type": "llama", "attention_bias": False, "qk_norm": False,
                                    "rope_scaling": None, "sliding_window": None}


def check_family(model_type: str) -> str:
    """``model_type`` if supported, else a one-line error naming the supported ones."""
    if model_type not in FAMILIES:
        raise AmoebaError(f"unsupported architecture {model_type!r}; supported: {', '.join(FAMILIES)}")
    return model_type


@dataclass(frozen=True)
class ModelGeometry:
    """Sizes and architecture family of a LLaMA-style decoder (no weights)."""

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
    model_type: str = "llama"
    attention_bias: bool = False  # biases on q/k/v (Qwen2/2.5)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # e.g. (("rope_type", "llama3"), ("factor", 8.0), ...)
    sliding_window: int | None = None
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        for f in ("n_layers", "hidden", "n_heads", "n_kv_heads", "intermediate", "vocab"):
            if int(getattr(self, f)) < 1:
                raise AmoebaError(f"geometry {self.name}: {f} must be >= 1")
        if self.n_heads % self.n_kv_heads:
            raise AmoebaError(
                f"geometry {self.name}: n_heads ({self.n_heads}) must divide by n_kv_heads ({self.n_kv_heads})"
            )
        check_family(self.model_type)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())) or None)
        elif self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", tuple(tuple(kv) for kv in self.rope_scaling) or None)
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
            model_type = check_family(str(c.get("model_type") or "llama"))
            rope = dict(c.get("rope_parameters") or {})
            scaling = dict(c.get("rope_scaling") or {k: v for k, v in rope.items() if k != "rope_theta"})
            if "type" in scaling and "rope_type" not in scaling:
                scaling["rope_type"] = scaling.pop("type")
            scaling.pop("rope_theta", None)
            if scaling.get("rope_type", "default") == "default":
                scaling = {}
            bias = c.get("attention_bias")
            window = c.get("sliding_window") if model_type == "mistral" else None
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
                model_type=model_type,
                # Qwen2's attention always has q/k/v biases (its config has no switch)
                attention_bias=True if model_type == "qwen2" else bool(bias),
                qk_norm=model_type == "qwen3",
                rope_scaling=tuple(sorted(scaling.items())) or None,
                sliding_window=int(window) if window else None,
                name=name or "hf",
            )
        except KeyError as e:
            raise AmoebaError(f"HF config is missing {e}") from None

    @classmethod
    def from_gguf(cls, path: str | Path, name: str | None = None) -> ModelGeometry:
        """From a llama/qwen2/qwen3 GGUF header (reads metadata only; a Mistral GGUF reads as llama)."""
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
        types = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
        if arch not in types:
            raise AmoebaError(f"GGUF {p.name}: architecture {arch!r} is not one of {', '.join(types)}")
        tensors = {t.name for t in r.tensors}
        vocab_field = r.fields.get("tokenizer.ggml.tokens")
        vocab = int(val(f"{arch}.vocab_size", 0)) or (len(vocab_field.data) if vocab_field else 0)
        n_heads = int(val(f"{arch}.attention.head_count"))
        hidden = int(val(f"{arch}.embedding_length"))
        return cls(
            n_layers=int(val(f"{arch}.block_count")),
            hidden=hidden,
            n_heads=n_heads,
            n_kv_heads=int(val(f"{arch}.attention.head_count_kv", n_heads)),
            intermediate=int(val(f"{arch}.feed_forward_length")),
            vocab=vocab,
            head_dim=int(val(f"{arch}.attention.key_length", val(f"{arch}.rope.dimension_count", hidden // n_heads))),
            # GGUF stores these as float32: round back to the decimal they were written from
            rms_eps=_f32(val(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=_f32(val(f"{arch}.rope.freq_base", 10000.0)),
            max_position=int(val(f"{arch}.context_length", 4096)),
            tie_embeddings="output.weight" not in tensors,
            model_type=types[arch],
            attention_bias="blk.0.attn_q.bias" in tensors,
            qk_norm="blk.0.attn_q_norm.weight" in tensors,
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
        """Weights of one decoder layer (attention with its biases and q/k norms, MLP, two norms)."""
        q = self.hidden * self.n_heads * self.head_dim
        kv = 2 * self.hidden * self.n_kv_heads * self.head_dim
        o = self.n_heads * self.head_dim * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        bias = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim if self.attention_bias else 0
        qk_norm = 2 * self.head_dim if self.qk_norm else 0
        return q + kv + o + mlp + 2 * self.hidden + bias + qk_norm

    def embedding_params(self) -> int:
        """Embedding + LM head (shared when tied) + final norm."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2) + self.hidden

    def n_params(self) -> int:
        return self.n_layers * self.layer_params() + self.embedding_params()

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def to_dict(self) -> dict[str, Any]:
        """Plain fields (YAML/JSON-safe; ``rope_scaling`` as a dict). Family fields at LLaMA's defaults are
        left out, so records of LLaMA geometries read as before."""
        d = asdict(self)
        d["rope_scaling"] = self.rope_scaling_dict
        return {k: v for k, v in d.items() if k not in _FAMILY_DEFAULTS or v != _FAMILY_DEFAULTS[k]}

    @property
    def fingerprint(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _f32(x: Any) -> float:
    return float(f"{float(x):.7g}")


@cache
def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("amoeba_core").joinpath("geometries.yaml").read_text()
    return yaml.safe_load(text)
