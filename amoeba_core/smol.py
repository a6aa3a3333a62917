"""SMoL: a shape-aware mixture of LoRAs (AmoebaLLM Stage 2).

Every adapted linear layer (by default q, k, v, o, gate, up and down of every decoder layer)
gets ``E`` LoRA experts of rank ``r`` and a small gate. The gate reads the *shape code* of the
subnet being run -- a 0/1 mask over the ``N`` layers it keeps, a soft one-hot over the
strategy's width grid for the MLP width (off-grid widths interpolate between the two nearest
grid widths), the MLP width itself and the fraction of attention heads kept -- and picks ``k`` of the ``E`` experts with softmax weights over their
logits. During training the gate is *noisy top-k* (Gaussian noise scaled by a learned
softplus, as in sparsely-gated mixtures of experts); in eval mode it is deterministic, so a
shape always maps to the same experts and weights.

Code versions. Adapters saved before attention and MLP widths were separate axes (no
``code_version`` in their config: version 1) read ``N + len(widths) + 1`` values: the one-hot and
scalar of the single width ratio. Version 2 (the default) appends the fraction of query heads
the shape keeps, computed with the shared width policy from the model's head/KV-group counts. So
``d24-a1.000-m0.750`` (all heads) and ``d24-w0.750`` (6 of SmolLM2's 9 heads) get different codes,
while ``d24-a0.667-m0.750`` and ``d24-w0.750`` -- one and the same network on SmolLM2 (6 heads
in 3 groups, 1152 channels) -- get the same code on purpose: the gate routes networks, not
spellings. One-ratio shapes keep the version-1 part of the code unchanged. Version-1 adapters
refuse shapes with a separate attention width (they never saw attention vary on its own).

Width. Stage 1 runs a narrower shape by masking the *inputs* of ``o_proj`` (per head) and
``down_proj`` (per channel), see :mod:`amoeba_core.subnet`. The adapter of ``o_proj`` and
``down_proj`` sits behind that mask (the pre-hook masks the input of the whole wrapped
module), so the LoRA contribution of dropped heads/channels is masked as well. The LoRA output
of dropped q/k/v rows and gate/up channels only reaches dropped units, which the same masks
remove (a dropped KV group drops all its query heads). Folding is therefore exact: the merged
weight ``W + sum_e w_e * s * B_e A_e`` is sliced by :func:`amoeba_core.subnet.extract_subnet`
exactly as the masked model uses it.

Deployment. :func:`merge_for_shape` returns a plain, physically smaller
``LlamaForCausalLM`` with the chosen experts' deltas merged: no adapter code or overhead, and
it loads with plain transformers after ``save_pretrained``.

Why not peft: peft's ``LoraConfig`` gives one LoRA per linear (or per named adapter switched
by hand); it has no mixture of experts routed by an input-independent *shape* code, and its
merge cannot slice the result for a subnet. The "one shared LoRA" ablation is the ``E=1, k=1``
case of this same module (same targets, initialisation and scaling), which keeps that
comparison apples to apples.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape, attention_width
from amoeba_core.strategy import Strategy

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

log = logging.getLogger(__name__)

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_TARGETS = ATTN + MLP


@dataclass
class SMoLConfig:
    """Adapter layout. ``n_experts=1, top_k=1`` is a plain shared LoRA."""

    n_layers: int
    widths: tuple[float, ...]
    n_experts: int = 4
    rank: int = 8
    top_k: int = 2
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_TARGETS
    noisy_gate: bool = True
    init_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # version 2: the code also carries the fraction of attention heads kept (needs the head counts,
    # filled from the model by install_smol when 0); version 1: adapters saved before that
    code_version: int = 2
    n_heads: int = 0
    n_kv_heads: int = 0

    def __post_init__(self) -> None:
        self.widths = tuple(sorted(float(w) for w in self.widths))
        self.targets = tuple(self.targets)
        if self.n_experts < 1 or self.rank < 1:
            raise AmoebaError(f"experts and rank must be >= 1 (got {self.n_experts}, {self.rank})")
        if not 1 <= self.top_k <= self.n_experts:
            raise AmoebaError(f"top-k must be between 1 and the number of experts ({self.n_experts}), got {self.top_k}")
        if self.code_version not in (1, 2):
            raise AmoebaError(f"unknown SMoL shape-code version {self.code_version} (known: 1, 2)")
        bad = set(self.targets) - set(ALL_TARGETS)
        if bad:
            raise AmoebaError(f"unknown adapter targets {sorted(bad)}; known: {', '.join(ALL_TARGETS)}")

    @property
    def code_dim(self) -> int:
        return self.n_layers + len(self.widths) + 1 + (self.code_version >= 2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"], d["targets"] = list(self.widths), list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SMoLConfig:
        return cls(**{"code_version": 1, **d})  # saved without a version: made before version 2

    def code(self, shape: SubnetShape) -> torch.Tensor:
        heads = (self.n_heads, self.n_kv_heads) if self.code_version >= 2 else None
        return shape_code(shape, self.n_layers, self.widths, heads)


def shape_code(shape: SubnetShape, n_layers: int, widths: tuple[float, ...],
               heads: tuple[int, int] | None = None) -> torch.Tensor:
    """Kept-layer mask (``n_layers``) + soft one-hot of the MLP width over ``widths`` + the MLP width
    scalar, and with ``heads`` = (n_heads, n_kv_heads) (code version 2) the fraction of attention
    heads the shape keeps. Without ``heads`` (version 1) a separate attention width is refused."""
    if heads is None and shape.separate:
        raise AmoebaError(f"shape {shape.grid_key} has its own attention width, but these adapters use shape "
                          "codes of version 1 (one width ratio); fine-tune again to route it")
    mask = torch.zeros(n_layers)
    mask[list(shape.layers)] = 1.0
    onehot = torch.zeros(len(widths))
    w = min(max(shape.width, widths[0]), widths[-1])
    for i in range(len(widths)):
        if w == widths[i]:
            onehot[i] = 1.0
            break
        if i + 1 < len(widths) and widths[i] < w < widths[i + 1]:
            t = (w - widths[i]) / (widths[i + 1] - widths[i])
            onehot[i], onehot[i + 1] = 1.0 - t, t
            break
    parts = [mask, onehot, torch.tensor([shape.width])]
    if heads is not None:
        n_heads, n_kv = heads
        if n_heads < 1 or n_kv < 1:
            raise AmoebaError("SMoL shape code version 2 needs the model's head counts")
        kept = attention_width(n_heads, n_kv, shape.axes.attn).n_heads
        parts.append(torch.tensor([kept / n_heads]))
    return torch.cat(parts)


class SMoLLinear(nn.Module):
    """A frozen ``nn.Linear`` plus ``E`` rank-``r`` LoRA experts chosen by a shape gate."""

    def __init__(self, base: nn.Linear, cfg: SMoLConfig, generator: torch.Generator,
                 extra_generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        e, r, n_in, n_out = cfg.n_experts, cfg.rank, base.in_features, base.out_features
        dev, dt = base.weight.device, base.weight.dtype
        self.n_experts, self.top_k, self.scale, self.noisy = e, cfg.top_k, cfg.alpha / r, cfg.noisy_gate
        a = torch.empty(e, r, n_in).uniform_(-1.0, 1.0, generator=generator) / n_in**0.5
        self.lora_A = nn.Parameter(a.to(dev, dt))
        self.lora_B = nn.Parameter(torch.zeros(e, n_out, r, device=dev, dtype=dt))
        if e > 1:
            self.gate = nn.Linear(cfg.code_dim, e, bias=True, device=dev, dtype=dt)
            self.noise = nn.Linear(cfg.code_dim, e, bias=True, device=dev, dtype=dt)
            with torch.no_grad():
                # the version-1 part is drawn exactly as before (same stream, same scale); the
                # attention column of version 2 from its own stream, so it shifts no other draw
                v1 = cfg.n_layers + len(cfg.widths) + 1
                w = torch.randn(e, v1, generator=generator) / v1**0.5
                if cfg.code_dim > v1:
                    g2 = extra_generator or torch.Generator().manual_seed(cfg.init_seed + 1)
                    w = torch.cat([w, torch.randn(e, cfg.code_dim - v1, generator=g2) / v1**0.5], 1)
                self.gate.weight.copy_(w)
                self.gate.bias.zero_()
                self.noise.weight.zero_()
                self.noise.bias.zero_()
        self.code: torch.Tensor | None = None

    def route(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert indices [k], weights [k]) for the current shape code."""
        if self.n_experts == 1:
            w = self.lora_A.new_ones(1)
            return torch.zeros(1, dtype=torch.long, device=w.device), w
        if self.code is None:
            raise AmoebaError("no shape set on the SMoL adapters: run the model inside adapted_subnet()")
        code = self.code.to(self.gate.weight)
        logits = self.gate(code)
        if self.training and self.noisy:
            logits = logits + torch.randn_like(logits) * nn.functional.softplus(self.noise(code))
        vals, idx = torch.topk(logits, self.top_k)
        return idx, torch.softmax(vals, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        idx, w = self.route()
        a = self.lora_A[idx]  # [k, r, in]
        b = self.lora_B[idx] * (w * self.scale)[:, None, None]  # [k, out, r]
        h = torch.einsum("...i,kri->...kr", x, a)
        return y + torch.einsum("...kr,kor->...o", h, b)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """``sum_e w_e * s * B_e @ A_e`` for the current shape, ``[out, in]``."""
        idx, w = self.route()
        return torch.einsum("k,kor,kri->oi", w * self.scale, self.lora_B[idx], self.lora_A[idx])


def install_smol(model: LlamaForCausalLM, cfg: SMoLConfig) -> list[SMoLLinear]:
    """Wrap the target linears of every layer in place; freeze everything else."""
    if cfg.n_layers != len(model.model.layers):
        raise AmoebaError(f"adapters are for {cfg.n_layers} layers, the model has {len(model.model.layers)}")
    if smol_modules(model):
        raise AmoebaError("the model already has SMoL adapters installed")
    if cfg.code_version >= 2:
        mc = model.config
        have = (mc.num_attention_heads, mc.num_key_value_heads or mc.num_attention_heads)
        if (cfg.n_heads, cfg.n_kv_heads) == (0, 0):
            cfg.n_heads, cfg.n_kv_heads = have
        elif (cfg.n_heads, cfg.n_kv_heads) != have:
            raise AmoebaError(f"adapters are for {cfg.n_heads} heads in {cfg.n_kv_heads} groups, the model has "
                              f"{have[0]} in {have[1]}")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.init_seed)
    gen_attn = torch.Generator().manual_seed(cfg.init_seed + 1)  # version 2's attention column of every gate
    mods: list[SMoLLinear] = []
    for layer in model.model.layers:
        for name in cfg.targets:
            parent = layer.self_attn if name in ATTN else layer.mlp
            wrapped = SMoLLinear(getattr(parent, name), cfg, gen, gen_attn)
            wrapped.train(model.training)  # noisy gate only while the model trains
            setattr(parent, name, wrapped)
            mods.append(wrapped)
    model._smol_config = cfg  # type: ignore[attr-defined]
    return mods


def smol_modules(model: nn.Module) -> list[SMoLLinear]:
    return [m for m in model.modules() if isinstance(m, SMoLLinear)]


def smol_config(model: nn.Module) -> SMoLConfig | None:
    return getattr(model, "_smol_config", None)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable adapter tensors only (experts and gates)."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [k for k in params if params[k].requires_grad and k not in state]
    unknown = [k for k in state if k not in params]
    if missing or unknown:
        raise AmoebaError(f"adapter state does not fit the model (missing {missing[:2]}, unknown {unknown[:2]})")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def set_shape(model: nn.Module, shape: SubnetShape | None) -> None:
    """Give every SMoL module the code of ``shape`` (``None`` clears it)."""
    cfg = smol_config(model)
    code = None if shape is None or cfg is None else cfg.code(shape)
    for m in smol_modules(model):
        m.code = code


@contextlib.contextmanager
def adapted_subnet(model: LlamaForCausalLM, shape: SubnetShape, strategy: Strategy | None) -> Iterator[LlamaForCausalLM]:
    """Run ``model`` (with or without SMoL adapters) as ``shape``: gates set, layers skipped, widths masked."""
    from amoeba_core.subnet import masked_subnet

    set_shape(model, shape)
    try:
        with masked_subnet(model, shape, strategy) as m:
            yield m
    finally:
        set_shape(model, None)


def routing(model: LlamaForCausalLM, shape: SubnetShape) -> list[tuple[list[int], list[float]]]:
    """Deterministic (eval) expert choice of every SMoL module for ``shape``."""
    set_shape(model, shape)
    out = []
    try:
        for m in smol_modules(model):
            was = m.training
            m.eval()
            with torch.no_grad():
                idx, w = m.route()
            m.train(was)
            out.append((idx.tolist(), [round(float(x), 6) for x in w]))
    finally:
        set_shape(model, None)
    return out


def plain_copy(model: LlamaForCausalLM, shape: SubnetShape | None = None) -> LlamaForCausalLM:
    """A deep copy with every SMoL module replaced by its base linear, deltas for ``shape`` merged."""
    set_shape(model, shape)
    try:
        out = copy.deepcopy(model)
    finally:
        set_shape(model, None)
    for name, mod in list(out.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, SMoLLinear):
                child.eval()
                base = child.base
                if shape is not None:
                    with torch.no_grad():
                        base.weight.add_(child.delta_weight().to(base.weight.dtype))
                setattr(mod, child_name, base)
    if hasattr(out, "_smol_config"):
        del out._smol_config
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


def merge_for_shape(model: LlamaForCausalLM, shape: SubnetShape, strategy: Strategy | None) -> LlamaForCausalLM:
    """A plain extracted ``LlamaForCausalLM`` for ``shape`` with the shape's expert deltas folded in."""
    from amoeba_core.subnet import extract_subnet

    if smol_config(model) is None:
        return extract_subnet(model, shape, strategy)
    return extract_subnet(plain_copy(model, shape), shape, strategy)
