"""A memory plan, computed before a model is loaded: does it fit on the device?

The plan is *computed* (an analytical account of tensor sizes, not a measurement) and says so
(``MemoryPlan.source == "computed"``). Its terms, in bytes:

* ``weights``: ``geometry.n_params() x`` bytes per element of ``dtype``.
* ``activations``: what a forward (inference) or forward+backward (training) keeps alive for
  ``batch x seq_len`` tokens. Training without gradient checkpointing stores, per decoder layer and
  token, the tensors autograd saves in a LLaMA-style layer: 5 x hidden (norm in/out, residual,
  post-norm in/out) + 2 x q width + 2 x kv width (q/k/v and the attention output) + 4 x
  intermediate (gate, up, act(gate), product), in ``dtype``; attention runs through SDPA, so no
  ``seq x seq`` score matrix is kept. With checkpointing only each layer's input (hidden per
  token) is kept, plus one layer's full set during its recomputation. Inference keeps one
  layer's working set.
* ``logits``: ``batch x seq_len x vocab`` in float32 (training: x3, the student's logits, their
  gradient and the teacher's probabilities of in-place distillation).
* ``kv_cache`` (``kv_cache=True``, generation): 2 x layers x kv heads x head_dim per token.
* ``lora_adapters``: ``lora_experts x rank x (in + out)`` per adapted linear (q, k, v, o, gate, up,
  down of every layer), float32; ``gradients`` of those (float32); ``optimizer_state``: AdamW's
  two float32 moments per trainable parameter. The frozen base weights get neither.
* ``reserve``: ``reserve_fraction`` of the sum above, for allocator fragmentation and the
  runtime's own buffers (CUDA context, workspaces) - a stated allowance, not a measurement.

Available memory: ``torch.cuda.mem_get_info`` (free bytes) on CUDA, available RAM on the CPU
(``psutil.virtual_memory().available``, else ``os.sysconf``), ``torch.mps.recommended_max_memory``
on MPS; or ``budget_bytes`` given by the caller (e.g. "a 24 GB GPU").

Stable API::

    plan = plan_memory(geometry, "bfloat16", batch=1, seq_len=2048, train=True, lora_rank=64,
                       grad_checkpointing=True, device="cuda:0")      # or budget_bytes=24 * 10**9
    plan.fits           # bool
    plan.terms          # {"weights": bytes, "activations": bytes, ...}
    plan.fmt()          # one line, every term in GiB
    plan.check()        # raises AmoebaError (the CLI: one-line error, exit 2) when it does not fit
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amoeba_core.errors import AmoebaError

if TYPE_CHECKING:
    import torch

    from amoeba_core.geometry import ModelGeometry

log = logging.getLogger(__name__)

GIB = 1024**3
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAPTED_LINEARS = 7  # q, k, v, o, gate, up, down


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a torch dtype or its name (float32, bfloat16, float16; fp32/bf16/fp16)."""
    name = str(dtype).removeprefix("torch.").lower()
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name)
    if name not in _DTYPE_BYTES:
        raise AmoebaError(f"unknown dtype {dtype!r}; choose one of: {', '.join(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


@dataclass(frozen=True)
class MemoryPlan:
    """Computed memory need of one run against the device's available memory (bytes)."""

    terms: dict[str, int]
    available_bytes: int
    available_source: str  # e.g. "torch.cuda.mem_get_info(cuda:0) free", "budget given"
    device: str
    what: str  # the run described, e.g. "train bfloat16 batch 1 x 2048 tokens, LoRA rank 64, checkpointing"
    source: str = field(default="computed")

    @property
    def total_bytes(self) -> int:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.available_bytes

    def fmt(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.terms.items() if v)
        verdict = "fits" if self.fits else "does not fit"
        return (f"memory plan ({self.source}) for {self.what}: {parts} = {self.total_bytes / GIB:.2f} GiB needed, "
                f"{self.available_bytes / GIB:.2f} GiB available on {self.device} ({self.available_source}): {verdict}")

    def check(self) -> MemoryPlan:
        """``self`` when it fits; else an :class:`AmoebaError` naming every term in GiB."""
        if not self.fits:
            raise AmoebaError(self.fmt())
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "what": self.what, "device": self.device,
                "terms_gib": {k: round(v / GIB, 3) for k, v in self.terms.items()},
                "total_gib": round(self.total_bytes / GIB, 3), "available_gib": round(self.available_bytes / GIB, 3),
                "available_source": self.available_source, "fits": self.fits}


def available_memory(device: torch.device | str = "cpu") -> tuple[int, str]:
    """Free bytes on ``device`` and how they were read."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free), f"torch.cuda.mem_get_info({dev}) free"
    if dev.type == "mps":
        mps = getattr(torch, "mps", None)
        if mps is not None and hasattr(mps, "recommended_max_memory"):
            return int(mps.recommended_max_memory()) - int(mps.current_allocated_memory()), "torch.mps recommended max"
    if dev.type == "meta":
        return 2**62, "meta device (no memory)"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "psutil available RAM"
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "os.sysconf available RAM"


def lora_params(geometry: ModelGeometry, rank: int, experts: int = 1) -> int:
    """Adapter parameters of rank ``rank`` (``experts`` per linear) on q, k, v, o, gate, up, down."""
    if rank <= 0:
        return 0
    h, q, kv, i = geometry.hidden, geometry.n_heads * geometry.head_dim, geometry.n_kv_heads * geometry.head_dim, \
        geometry.intermediate
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return geometry.n_layers * experts * rank * per_layer


def _layer_saved(geometry: ModelGeometry) -> int:
    """Elements autograd keeps per token for one decoder layer (see the module docstring)."""
    q, kv = geometry.n_heads * geometry.head_dim, geometry.n_kv_heads * geometry.head_dim
    return 5 * geometry.hidden + 2 * q + 2 * kv + 4 * geometry.intermediate


def plan_memory(geometry: ModelGeometry, dtype: Any, *, batch: int, seq_len: int, train: bool = False,
                lora_rank: int = 0, lora_experts: int = 1, grad_checkpointing: bool = False,
                kv_cache: bool = False, device: torch.device | str = "cpu", budget_bytes: int | None = None,
                reserve_fraction: float = 0.1) -> MemoryPlan:
    """The computed :class:`MemoryPlan` of a run (see the module docstring for every term)."""
    if batch < 1 or seq_len < 1:
        raise AmoebaError(f"batch and seq_len must be >= 1 (got {batch}, {seq_len})")
    b = dtype_bytes(dtype)
    tokens = batch * seq_len
    g = geometry
    terms: dict[str, int] = {"weights": g.n_params() * b}
    if train:
        if grad_checkpointing:
            act = tokens * (g.n_layers * g.hidden + _layer_saved(g)) * b
        else:
            act = tokens * g.n_layers * _layer_saved(g) * b
        logits = 3 * tokens * g.vocab * 4
    else:
        act = tokens * _layer_saved(g) * b
        logits = tokens * g.vocab * 4
    terms["activations"] = act
    terms["logits"] = logits
    if kv_cache:
        terms["kv_cache"] = 2 * g.n_layers * g.n_kv_heads * g.head_dim * tokens * b
    if train:
        n_lora = lora_params(g, lora_rank, lora_experts)
        terms["lora_adapters"] = n_lora * 4
        terms["gradients"] = n_lora * 4
        terms["optimizer_state"] = 2 * n_lora * 4
    terms["reserve"] = int(reserve_fraction * sum(terms.values()))
    dev = str(device)
    if budget_bytes is not None:
        available, how = int(budget_bytes), "budget given"
    else:
        available, how = available_memory(device)
    what = f"{'train' if train else 'inference'} {str(dtype).removeprefix('torch.')} batch {batch} x {seq_len} tokens"
    if train and lora_rank:
        what += f", LoRA rank {lora_rank}" + (f" x {lora_experts} experts" if lora_experts > 1 else "")
    if train:
        what += ", gradient checkpointing" if grad_checkpointing else ", no checkpointing"
    plan = MemoryPlan(terms=terms, available_bytes=available, available_source=how, device=dev,
                      what=f"{g.name} ({g.n_params() / 1e9:.2f} B params) {what}")
    log.info("%s", plan.fmt())
    return plan
