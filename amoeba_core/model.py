"""Model building and loading.

``llama_config``/``random_llama`` build a stock transformers ``LlamaForCausalLM`` of a given
geometry with random weights (latency does not depend on weight values).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amoeba_core.shape import ModelGeometry

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

log = logging.getLogger(__name__)


def llama_config(geometry: ModelGeometry) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=geometry.vocab,
        hidden_size=geometry.hidden,
        intermediate_size=geometry.intermediate,
        num_hidden_layers=geometry.n_layers,
        num_attention_heads=geometry.n_heads,
        num_key_value_heads=geometry.n_kv_heads,
        head_dim=geometry.head_dim,
        rms_norm_eps=geometry.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": geometry.rope_theta},
        max_position_embeddings=geometry.max_position,
        tie_word_embeddings=geometry.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
    )


def random_llama(geometry: ModelGeometry, dtype: torch.dtype | str = "float32", seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised LLaMA of ``geometry`` in eval mode."""
    import torch
    from transformers import LlamaForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(geometry)).to(dtype)
    return model.eval()
