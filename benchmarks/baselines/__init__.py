"""What a user would pick instead of AmoebaLLM: each peer method's candidate subnets of one model.

Every baseline follows its paper's selection criterion, on the tool's own calibration text
(the ``calib`` split; Torch-Pruning uses none, it ranks by weights):

* ShortGPT (Men et al., 2024): block influence ``BI_i = 1 - E[cos(h_in, h_out)]`` per layer; a
  model of depth ``d`` keeps the ``d`` layers of highest influence (depth only, full width).
* Shortened LLaMA, PPL criterion (Kim et al., 2024): remove each block alone and measure the
  calibration perplexity; the blocks whose removal hurts least go first (one-shot ranking).
* FLAP (An et al., 2024): the fluctuation of each head's / MLP channel's input over calibration
  tokens times the squared norm of its output weight column, the same ratio in every layer
  (its uniform variant; the tool's ``flap`` width metric computes exactly this score, without
  FLAP's bias compensation). Width only, full depth.
* Torch-Pruning (Fang et al., 2023; PyPI ``torch-pruning``): the library's own
  ``GroupMagnitudeImportance`` (L2 of each coupled group) and ``MetaPruner``, run on a copy of
  the model. Only MLP channels are pruned: asked to remove whole KV groups of SmolLM2's GQA
  attention (9 query heads sharing 3 KV heads) it either fails (``num_heads`` per query head:
  ``shape '[9, -1]' is invalid for input of size 192``) or cuts query and KV projections
  inconsistently (``num_heads`` per KV group: 512 query channels against 2 KV heads), so the
  attention is left whole (attention layers and embeddings in ``ignored_layers``).

Each function returns candidates as (label, shape, strategy) for the tool's evaluator and latency
tables; :func:`torch_pruning_model` returns a pruned model to wrap as a ``LoadedModel``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from amoeba_core.depth import block_influence, block_influence_layers
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy


def shortgpt_layers(loaded: LoadedModel, calib: torch.Tensor, depths: list[int]) -> tuple[list[float], dict[int, tuple[int, ...]]]:
    """Block influence per layer and, per depth, the layers ShortGPT keeps."""
    bi = block_influence(loaded, calib)
    return bi, block_influence_layers(bi, depths)


def shortened_ppl_layers(evaluator: Any, n_layers: int, depths: list[int]) -> tuple[list[float], dict[int, tuple[int, ...]]]:
    """Calibration perplexity with each block removed alone and, per depth, the layers kept: the
    ``n - d`` blocks whose single removal gives the lowest perplexity are removed (one shot)."""
    ppl = [evaluator.score(SubnetShape(tuple(j for j in range(n_layers) if j != i), 1.0)).ppl for i in range(n_layers)]
    order = sorted(range(n_layers), key=lambda i: ppl[i])  # least harmful removal first
    return ppl, {d: tuple(sorted(set(range(n_layers)) - set(order[: n_layers - d]))) for d in depths}


def flap_strategy(loaded: LoadedModel, calib: torch.Tensor, widths: tuple[float, ...]) -> Strategy:
    """A strategy whose width rankings are FLAP's fluctuation scores (depths: drop-last, unused)."""
    from amoeba_core.width import apply_metric, collect_stats

    base = Strategy.trivial(loaded.geometry, loaded.fingerprint, loaded.source, widths=widths)
    return apply_metric(base, loaded, collect_stats(loaded, calib), "flap")


def torch_pruning_model(loaded: LoadedModel, mlp_ratio: float) -> LoadedModel:
    """A copy of ``loaded`` with ``mlp_ratio`` of every MLP's channels removed by Torch-Pruning."""
    import torch_pruning as tp

    model = copy.deepcopy(loaded.model).eval()
    layers = model.model.layers
    ignored = [model.lm_head, model.model.embed_tokens] + [
        m for layer in layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                                        layer.self_attn.o_proj)]
    example = torch.randint(0, min(1000, model.config.vocab_size), (1, 16))
    pruner = tp.pruner.MetaPruner(model, example_inputs=example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=mlp_ratio, ignored_layers=ignored, output_transform=lambda x: x.logits,
                                  round_to=4)
    pruner.step()
    inter = {layer.mlp.gate_proj.out_features for layer in layers}
    if len(inter) != 1:
        raise RuntimeError(f"Torch-Pruning left unequal MLP widths {sorted(inter)}")
    model.config.intermediate_size = inter.pop()
    for layer in layers:
        layer.mlp.intermediate_size = model.config.intermediate_size
    fp = f"{loaded.fingerprint}-tp-mlp{mlp_ratio:g}"
    return LoadedModel(model, loaded.tokenizer, loaded.geometry, fp, f"{loaded.source} (Torch-Pruning mlp {mlp_ratio:g})")


def mlp_keep(loaded: LoadedModel, pruned: LoadedModel) -> float:
    """The share of MLP channels ``pruned`` kept (its MLP width)."""
    return pruned.model.config.intermediate_size / loaded.geometry.intermediate
