"""A LLaMA decoder with an explicit KV cache, written to export as two fixed-shape graphs.

HF cache objects (``DynamicCache``/``StaticCache``) do not survive ``torch.export`` into
compilers such as TVM Relax, and TVM's importer drops in-place buffer mutations. So this module
takes the cache as plain tensors and *returns* the updated cache:

* prefill ``(ids[1,P]) -> (logits[1,V], k_0, v_0, ..., k_{L-1}, v_{L-1})`` with each cache
  tensor ``[1, n_kv, P, head_dim]``; logits of the last token only (time to first token).
* decode ``(ids[1,1], k_0, v_0, ...) -> (logits[1,V], k'_0, v'_0, ...)``: the past holds ``P``
  tokens, the new token sits at position ``P`` and attends to all ``P + 1`` (no mask is needed
  because the graph is specialised to ``P``; this is the present = concat(past, new) contract
  of ONNX-style exports, one graph per context length).

Weights are borrowed from a stock ``LlamaForCausalLM`` (``amoeba_core.model.random_llama``),
so the graphs are checked against transformers directly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class KvLlama(nn.Module):
    """Explicit-cache forward over the weights of an HF ``LlamaForCausalLM``."""

    def __init__(self, hf_model: Any) -> None:
        super().__init__()
        cfg = hf_model.config
        self.embed = hf_model.model.embed_tokens
        self.layers = hf_model.model.layers
        self.norm = hf_model.model.norm
        self.lm_head = hf_model.lm_head
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        inv = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    # -- pieces ------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(var + self.eps))

    def _rope(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + n, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _attend(self, layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None, causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        att = layer.self_attn
        q = att.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = att.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = att.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        s = k.shape[2]
        g = self.n_heads // self.n_kv
        kk = k[:, :, None].expand(b, self.n_kv, g, s, self.head_dim).reshape(b, self.n_heads, s, self.head_dim)
        vv = v[:, :, None].expand(b, self.n_kv, g, s, self.head_dim).reshape(b, self.n_heads, s, self.head_dim)
        scores = torch.matmul(q, kk.transpose(2, 3)) * (self.head_dim ** -0.5)
        if causal:
            # future positions get -1e9 (built from aranges: TVM cannot legalise full(-inf))
            future = (torch.arange(s)[None, :] > torch.arange(t)[:, None]).to(scores.dtype)
            scores = scores - future * 1e9
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, vv).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return att.o_proj(out), k, v

    def _run(self, ids: torch.Tensor, past: tuple[torch.Tensor, ...], start: int) -> tuple[torch.Tensor, ...]:
        x = self.embed(ids)
        cos, sin = self._rope(start, ids.shape[1])
        present: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            p = (past[2 * i], past[2 * i + 1]) if past else None
            a, k, v = self._attend(layer, self._rms(x, layer.input_layernorm.weight), cos, sin, p, causal=not past)
            x = x + a
            h = self._rms(x, layer.post_attention_layernorm.weight)
            mlp = layer.mlp
            x = x + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
            present += [k, v]
        last = x.narrow(1, x.shape[1] - 1, 1).reshape(x.shape[0], x.shape[2])
        logits = self.lm_head(self._rms(last, self.norm.weight))
        return (logits, *present)


class Prefill(nn.Module):
    """``ids[1,P] -> (logits, *present)``."""

    def __init__(self, core: KvLlama) -> None:
        super().__init__()
        self.core = core

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.core._run(ids, (), 0)


class Decode(nn.Module):
    """``(ids[1,1], *past) -> (logits, *present)`` for a past of exactly ``prompt_len`` tokens."""

    def __init__(self, core: KvLlama, prompt_len: int) -> None:
        super().__init__()
        self.core = core
        self.prompt_len = int(prompt_len)

    def forward(self, ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.core._run(ids, past, self.prompt_len)


def example_inputs(core: KvLlama, phase: str, prompt_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Token ids (and, for decode, a random past of ``prompt_len`` tokens) for export and checks."""
    g = torch.Generator().manual_seed(seed)
    vocab = core.embed.num_embeddings
    if phase == "prefill":
        return (torch.randint(0, vocab, (1, prompt_len), generator=g),)
    ids = torch.randint(0, vocab, (1, 1), generator=g)
    shape = (1, core.n_kv, prompt_len, core.head_dim)
    past = tuple(torch.randn(shape, generator=g) for _ in range(2 * len(core.layers)))
    return (ids, *past)
