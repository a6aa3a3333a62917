"""Floor latency of one prefill or decode step of a shape on a device (the roofline bound).

For a scaled geometry (``ModelGeometry.scaled``), with ``b`` bytes per value and ``P`` the prompt
length (the context a decode step attends to):

* weights read once per step: every decoder layer, the final norm and the LM head
  (``vocab x hidden``; when tied it is the embedding matrix, read once);
* decode: KV bytes read ``= L * 2 * n_kv * head_dim * (P + 1) * b``; FLOPs
  ``= 2 * (L * layer_params + vocab * hidden) + L * 4 * n_heads * head_dim * (P + 1)``;
* prefill: KV bytes written ``= L * 2 * n_kv * head_dim * P * b``; FLOPs
  ``= 2 * P * L * layer_params + 2 * vocab * hidden`` (logits of the last token only, as the
  flows time it) ``+ L * 4 * n_heads * head_dim * P (P + 1) / 2`` (causal attention).

floor = max(bytes / bandwidth, FLOPs / peak). Batch multiplies FLOPs and KV, not weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.device import DeviceSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32}


DTYPE_ALIASES = {"f32": "float32", "fp32": "float32", "f16": "float16", "fp16": "float16", "bf16": "bfloat16"}


def dtype_bytes(dtype: str) -> float:
    """Bytes per weight for a dtype or GGUF quant type name (f16/f32 aliases accepted)."""
    key = DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if key not in DTYPE_BYTES:
        raise AmoebaError(f"unknown dtype {dtype!r} for the roofline; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[key]


@dataclass(frozen=True)
class Roofline:
    bytes_moved: float
    flops: float
    memory_ms: float
    compute_ms: float

    @property
    def floor_ms(self) -> float:
        return max(self.memory_ms, self.compute_ms)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_ms >= self.compute_ms else "compute"


def roofline(
    geometry: ModelGeometry,
    device: DeviceSpec,
    phase: str,
    prompt_len: int,
    weight_bytes: float = 4.0,
    peak_dtype: str = "float32",
    batch: int = 1,
    kv_bytes: float | None = None,
) -> Roofline:
    g = geometry
    if phase not in ("prefill", "decode"):
        raise AmoebaError(f"phase must be prefill or decode, got {phase!r}")
    kvb = weight_bytes if kv_bytes is None else kv_bytes
    kvb = max(kvb, 2.0) if kv_bytes is None and weight_bytes < 2 else kvb  # quantised weights keep an f16 cache
    L, P = g.n_layers, prompt_len
    layer = g.layer_params() - 2 * g.hidden  # matmul weights (norms are negligible FLOPs)
    head = g.vocab * g.hidden
    weights_b = (L * g.layer_params() + head + g.hidden) * weight_bytes
    kv_per_tok = L * 2 * g.n_kv_heads * g.head_dim * kvb
    attn = L * 4 * g.n_heads * g.head_dim
    if phase == "decode":
        nbytes = weights_b + batch * kv_per_tok * (P + 1)
        flops = batch * (2 * (L * layer + head) + attn * (P + 1))
    else:
        nbytes = weights_b + batch * kv_per_tok * P
        flops = batch * (2 * P * L * layer + 2 * head + attn * P * (P + 1) / 2)
    return Roofline(
        bytes_moved=nbytes,
        flops=flops,
        memory_ms=nbytes / (device.memory_bandwidth_gbs * 1e9) * 1e3,
        compute_ms=flops / device.peak(peak_dtype) * 1e3,
    )


def floor_ms(
    geometry: ModelGeometry,
    device: DeviceSpec,
    phase: str,
    prompt_len: int,
    dtype_bytes_: float = 4.0,
    peak_dtype: str = "float32",
    batch: int = 1,
) -> float:
    """The roofline floor in milliseconds (see the module docstring)."""
    return roofline(geometry, device, phase, prompt_len, dtype_bytes_, peak_dtype, batch).floor_ms


def peak_dtype_for(variant_dtype: str) -> str:
    """Which peak applies: quantised weights are de-quantised to f16/f32 math on most runtimes."""
    d = variant_dtype.lower()
    if d in ("float32", "f32", "fp32"):
        return "float32"
    if d in ("bfloat16", "bf16"):
        return "bfloat16"
    return "float16"
