"""Subnets of a loaded model: physical extraction and masked (weight-sharing) execution.

``extract_subnet`` builds a *new*, smaller model of the input's own transformers class
(``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``): dropped
layers are removed, q/k/v/o rows/columns of dropped heads (with the q/k/v biases of Qwen2) and
gate/up/down of dropped channels are sliced away, the config is updated and each kept layer's
``layer_idx`` is renumbered. Qwen3's q/k RMSNorm weights act per head over ``head_dim`` and are
shared by all heads, so they are kept whole. Under GQA, whole KV groups are kept or dropped
(``strategy.kept_groups``) together with their query heads. It loads back with plain
transformers from ``save_pretrained``.

``masked_subnet`` runs the *full* model as the subnet without copying: dropped layers are
skipped and the inputs of ``o_proj``/``down_proj`` are multiplied by a 0/1 mask over the
dropped heads/channels. Dropping a head's slice of ``o_proj``'s input removes exactly that
head's contribution (attention is per head), and dropping a KV group drops all its query
heads, so the result equals the extracted model. All shapes share the full model's weights,
which is what Stage 2 fine-tuning needs.

Widths are passed as one ratio ``w`` (today's policy) or as :class:`~amoeba_core.shape.WidthAxes`
``(attention, MLP)`` for shapes with separate widths (``d24-a0.667-m0.750``): heads are cut by
the attention ratio and channels by the MLP ratio, independently, from the same rankings.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape, WidthAxes, as_axes
from amoeba_core.strategy import Strategy

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

log = logging.getLogger(__name__)


def _check(model: LlamaForCausalLM, shape: SubnetShape, strategy: Strategy | None) -> None:
    n = len(model.model.layers)
    shape.check_fits(n)
    if shape.narrowed and strategy is None:
        raise AmoebaError(f"shape {shape.grid_key} narrows the width: a strategy (rankings) is needed")
    if strategy is not None and int(strategy.geometry["n_layers"]) != n:
        raise AmoebaError(f"strategy is for {strategy.geometry['n_layers']} layers, the model has {n}")
    if strategy is not None and shape.attn_width is not None:
        strategy.model_geometry.check_width(shape.attn_width, "attn")


def head_mask(model: LlamaForCausalLM, layer: int, width: float | WidthAxes, strategy: Strategy) -> torch.Tensor:
    """0/1 vector over the ``n_heads * head_dim`` inputs of ``o_proj`` (attention ratio of ``width``)."""
    import torch

    cfg = model.config
    hd = cfg.head_dim
    mask = torch.zeros(cfg.num_attention_heads * hd)
    for h in strategy.kept_heads(layer, as_axes(width).attn):
        mask[h * hd : (h + 1) * hd] = 1.0
    return mask


def channel_mask(model: LlamaForCausalLM, layer: int, width: float | WidthAxes, strategy: Strategy) -> torch.Tensor:
    """0/1 vector over the MLP channels (inputs of ``down_proj``; MLP ratio of ``width``)."""
    import torch

    mask = torch.zeros(model.config.intermediate_size)
    mask[strategy.kept_channels(layer, as_axes(width).mlp)] = 1.0
    return mask


def _fill(model: LlamaForCausalLM, layer: int, width: float | WidthAxes, strategy: Strategy) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-layer vectors added to the masked inputs of o_proj/down_proj (bias compensation)."""
    import torch

    means = strategy.unit_means(layer)
    if means is None:
        return None
    attn = torch.tensor(means[0]) * (1 - head_mask(model, layer, width, strategy))
    mlp = torch.tensor(means[1]) * (1 - channel_mask(model, layer, width, strategy))
    return attn, mlp


@contextlib.contextmanager
def _hooks(model: LlamaForCausalLM, layers: dict[int, torch.nn.Module], width: float | WidthAxes, strategy: Strategy | None) -> Iterator[None]:
    """Mask (and, with bias compensation, mean-fill) dropped units of ``layers`` {orig index: module}."""
    width = as_axes(width)
    if not width.narrowed:
        yield
        return
    assert strategy is not None
    p = next(model.parameters())
    handles = []
    try:
        for i, layer in layers.items():
            fill = _fill(model, i, width, strategy)
            for j, (mod, mask) in enumerate(
                (
                    (layer.self_attn.o_proj, head_mask(model, i, width, strategy)),
                    (layer.mlp.down_proj, channel_mask(model, i, width, strategy)),
                )
            ):
                m = mask.to(device=p.device, dtype=p.dtype)
                if fill is None:
                    hook = lambda _mod, args, m=m: (args[0] * m, *args[1:])  # noqa: E731
                else:
                    f = fill[j].to(device=p.device, dtype=p.dtype)
                    hook = lambda _mod, args, m=m, f=f: (args[0] * m + f, *args[1:])  # noqa: E731
                handles.append(mod.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def width_hooks(model: LlamaForCausalLM, width: float | WidthAxes, strategy: Strategy | None, layers: list[int] | None = None) -> contextlib.AbstractContextManager[None]:
    """Narrow ``layers`` (original indices, default all) of the full model to ``width`` (one ratio or
    ``shape.axes``) inside the context."""
    idx = range(len(model.model.layers)) if layers is None else layers
    return _hooks(model, {i: model.model.layers[i] for i in idx}, width, strategy)


@contextlib.contextmanager
def masked_subnet(model: LlamaForCausalLM, shape: SubnetShape, strategy: Strategy | None = None) -> Iterator[LlamaForCausalLM]:
    """Run ``model`` as ``shape`` inside the context (layers skipped, widths masked).

    The same module objects are used (gradients flow into the shared weights). On exit the
    model is restored exactly. Not re-entrant on the same model.
    """
    import torch.nn as nn

    _check(model, shape, strategy)
    inner = model.model
    full_layers = inner.layers
    n_full = model.config.num_hidden_layers
    old_idx = [layer.self_attn.layer_idx for layer in full_layers]
    old_types = getattr(model.config, "layer_types", None)
    try:
        inner.layers = nn.ModuleList([full_layers[i] for i in shape.layers])
        model.config.num_hidden_layers = shape.depth
        if old_types is not None:
            model.config.layer_types = [old_types[i] for i in shape.layers]
        for new, layer in enumerate(inner.layers):
            layer.self_attn.layer_idx = new
        with _hooks(model, {i: full_layers[i] for i in shape.layers}, shape.axes, strategy):
            yield model
    finally:
        inner.layers = full_layers
        model.config.num_hidden_layers = n_full
        if old_types is not None:
            model.config.layer_types = old_types
        for layer, i in zip(full_layers, old_idx):
            layer.self_attn.layer_idx = i


def extract_subnet(model: LlamaForCausalLM, shape: SubnetShape, strategy: Strategy | None = None) -> LlamaForCausalLM:
    """A new, physically smaller model of ``model``'s class for ``shape`` (see the module docstring)."""
    import torch

    _check(model, shape, strategy)
    cfg = copy.deepcopy(model.config)
    hd = cfg.head_dim
    first = shape.layers[0]
    ax = shape.axes
    narrowed = shape.narrowed
    if narrowed:
        assert strategy is not None
        n_heads = len(strategy.kept_heads(first, ax.attn))
        n_kv = len(strategy.kept_groups(first, ax.attn))
        inter = len(strategy.kept_channels(first, ax.mlp))
    else:
        n_heads, n_kv, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    cfg.num_hidden_layers = shape.depth
    cfg.num_attention_heads = n_heads
    cfg.num_key_value_heads = n_kv
    cfg.intermediate_size = inter
    cfg.head_dim = hd
    compensate = narrowed and strategy is not None and strategy.bias_compensation
    if compensate:
        if cfg.model_type != "llama":
            raise AmoebaError(f"bias compensation needs o_proj/MLP biases, which only LLaMA's class has "
                              f"(this model is {cfg.model_type}); use a strategy without bias compensation")
        cfg.attention_bias = True
        cfg.mlp_bias = True
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in shape.layers]
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    with torch.device("meta"):
        sub = type(model)(cfg)  # the input's own class (Llama, Mistral, Qwen2, Qwen3 ForCausalLM)
    src = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        if k in src:
            out[k] = src[k]
    for new, old in enumerate(shape.layers):
        pre, npre = f"model.layers.{old}.", f"model.layers.{new}."
        if narrowed:
            assert strategy is not None
            heads = strategy.kept_heads(old, ax.attn)
            groups = strategy.kept_groups(old, ax.attn)
            chans = torch.tensor(strategy.kept_channels(old, ax.mlp))
            q_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])
            kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups])
            if len(heads) != n_heads or len(groups) != n_kv or len(chans) != inter:
                raise AmoebaError("per-layer widths differ: uniform layers are required for a stock transformers model")
        for name, t in src.items():
            if not name.startswith(pre):
                continue
            leaf = name[len(pre) :]
            if narrowed:
                if leaf in ("self_attn.q_proj.weight", "self_attn.q_proj.bias"):
                    t = t[q_rows]
                elif leaf.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                    t = t[kv_rows]
                elif leaf == "self_attn.o_proj.weight":
                    t = t[:, q_rows]
                elif leaf.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
                    t = t[chans]
                elif leaf == "mlp.down_proj.weight":
                    t = t[:, chans]
            out[npre + leaf] = t.clone()
        if compensate:
            assert strategy is not None
            fill = _fill(model, old, ax, strategy)
            assert fill is not None
            for mod, f in (("self_attn.o_proj", fill[0]), ("mlp.down_proj", fill[1])):
                w = src[f"{pre}{mod}.weight"]
                b = src.get(f"{pre}{mod}.bias")
                extra = (w.float() @ f.to(w.device).float()).to(w.dtype)
                out[f"{npre}{mod}.bias"] = extra if b is None else b + extra
            for mod, size in (("q_proj", n_heads * hd), ("k_proj", n_kv * hd), ("v_proj", n_kv * hd)):
                out.setdefault(f"{npre}self_attn.{mod}.bias", torch.zeros(size, dtype=dtype, device=device))
            for mod in ("gate_proj", "up_proj"):
                out.setdefault(f"{npre}mlp.{mod}.bias", torch.zeros(inter, dtype=dtype, device=device))
    missing = set(sub.state_dict()) - set(out)
    if cfg.tie_word_embeddings:
        missing.discard("lm_head.weight")
    if missing:
        raise AmoebaError(f"cannot extract subnet: no weights for {sorted(missing)[:3]}")
    sub.load_state_dict(out, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        sub.tie_weights()
    # non-persistent buffers (rotary inv_freq) were created on meta: rebuild them
    sub.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    sub.to(device=device, dtype=dtype)
    for new, layer in enumerate(sub.model.layers):
        layer.self_attn.layer_idx = new
    return sub.eval()


def n_params(model: LlamaForCausalLM) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())
