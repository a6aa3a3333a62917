"""Physical extraction equals masked execution; parameter counts; stock transformers reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy
from amoeba_core.subnet import extract_subnet, masked_subnet, n_params
from tests._parity import extracted_matches_masked

SHAPES = [((0, 1, 2, 3), 1.0), ((0, 2, 3), 0.75), ((1, 3), 0.5), ((0, 1, 3), 0.25), ((3,), 0.875)]
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layers,width", SHAPES)
def test_extracted_equals_masked(tiny: LoadedModel, strategy: Strategy, bias_strategy: Strategy, layers: tuple[int, ...],
                                 width: float, bias: bool) -> None:
    st = bias_strategy if bias else strategy
    shape = SubnetShape(layers, width)
    sub, _ = extracted_matches_masked(tiny.model, shape, st, IDS)
    assert n_params(sub) == tiny.geometry.scaled(shape).n_params() + (bias and width < 1) * _bias_params(sub)
    assert sub.config.num_hidden_layers == len(layers)
    assert [lyr.self_attn.layer_idx for lyr in sub.model.layers] == list(range(len(layers)))


def _bias_params(sub: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in sub.named_parameters() if n.endswith(".bias"))


def test_masked_restores_and_differs(tiny: LoadedModel, strategy: Strategy) -> None:
    with torch.no_grad():
        full = tiny.model(input_ids=IDS).logits
        with masked_subnet(tiny.model, SubnetShape((0, 3), 0.5), strategy) as m:
            small = m(input_ids=IDS, use_cache=False).logits
        again = tiny.model(input_ids=IDS).logits
    assert torch.equal(full, again)
    assert not torch.allclose(full, small)
    assert len(tiny.model.model.layers) == 4


def test_width_units_really_dropped(tiny: LoadedModel, strategy: Strategy) -> None:
    shape = SubnetShape((0, 1, 2, 3), 0.5)
    sub = extract_subnet(tiny.model, shape, strategy)
    g = tiny.geometry.scaled(shape)
    attn = sub.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (g.n_heads * g.head_dim, g.hidden)
    assert attn.k_proj.weight.shape == (g.n_kv_heads * g.head_dim, g.hidden)
    assert sub.model.layers[0].mlp.down_proj.weight.shape == (g.hidden, g.intermediate)
    # the kept rows are the ranked ones: layer 0's first kept head is strategy.kept_heads(0, 0.5)[0]
    h = strategy.kept_heads(0, 0.5)[0]
    hd = g.head_dim
    assert torch.equal(attn.q_proj.weight[:hd], tiny.model.model.layers[0].self_attn.q_proj.weight[h * hd : (h + 1) * hd])


def test_stock_reload_and_kv_cache(tiny: LoadedModel, bias_strategy: Strategy, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    shape = SubnetShape((0, 2, 3), 0.75)
    sub = extract_subnet(tiny.model, shape, bias_strategy)
    sub.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(back(input_ids=IDS).logits, sub(input_ids=IDS).logits, atol=1e-6)
        # greedy decoding with the KV cache equals recomputing from scratch (layer_idx renumbered)
        out = back.generate(IDS[:1, :8], max_new_tokens=6, do_sample=False, use_cache=True)
        ids = IDS[:1, :8]
        for _ in range(6):
            nxt = back(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert torch.equal(out, ids)


def test_narrow_shape_needs_strategy(tiny: LoadedModel) -> None:
    with pytest.raises(AmoebaError, match="strategy"):
        extract_subnet(tiny.model, SubnetShape((0, 1), 0.5), None)
    with pytest.raises(AmoebaError, match="layer 7"):
        extract_subnet(tiny.model, SubnetShape((0, 7), 1.0), None)
