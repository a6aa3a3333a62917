"""The explicit-cache LLaMA used for compiler exports equals transformers' LlamaForCausalLM."""

from __future__ import annotations

import torch

from amoeba_core.model import random_llama
from amoeba_core.shape import ModelGeometry
from profiler.flows._kv_llama import Decode, KvLlama, Prefill
from profiler.flows.pytorch import cache_kwarg


def test_prefill_then_decode_match_transformers() -> None:
    from transformers import DynamicCache

    g = ModelGeometry.preset("tiny").scaled_dims(2, 0.75)  # GQA (4 heads, 2 KV groups), narrower MLP
    hf = random_llama(g, seed=1)
    core = KvLlama(hf).eval()
    ids = torch.randint(0, g.vocab, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = Prefill(core)(ids)
        cache = DynamicCache(config=hf.config)
        ref = hf(input_ids=ids, **{cache_kwarg(): cache}, use_cache=True)
        assert torch.allclose(out[0], ref.logits[:, -1], atol=1e-5)
        past = tuple(t for i in range(g.n_layers) for t in (cache.layers[i].keys, cache.layers[i].values))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out[1:], past))
        new = torch.tensor([[7]])
        dec = Decode(core, 12)(new, *past)
        ref2 = hf(input_ids=new, **{cache_kwarg(): cache}, use_cache=True)
        assert torch.allclose(dec[0], ref2.logits[:, -1], atol=1e-5)
        assert dec[1].shape == (1, g.n_kv_heads, 13, g.head_dim)
        assert torch.allclose(dec[1], cache.layers[0].keys, atol=1e-6)
