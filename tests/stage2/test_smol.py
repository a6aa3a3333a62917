from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.smol import (
    SMoLConfig,
    adapted_subnet,
    install_smol,
    merge_for_shape,
    routing,
    set_shape,
    shape_code,
    smol_modules,
)
from amoeba_core.strategy import Strategy


def _randomise_b(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in smol_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


def test_gate_picks_k_experts(loaded: LoadedModel, strategy: Strategy) -> None:
    install_smol(loaded.model, SMoLConfig(n_layers=4, widths=strategy.widths, n_experts=5, top_k=2))
    shapes = strategy.shapes()
    routes = {s.key: routing(loaded.model, s) for s in shapes}
    for r in routes.values():
        for idx, w in r:
            assert len(idx) == 2 and len(set(idx)) == 2 and all(0 <= i < 5 for i in idx)
            assert sum(w) == pytest.approx(1.0, abs=1e-5) and all(x > 0 for x in w)
    # eval routing is deterministic; distinct shapes do not all share one routing
    assert routes[shapes[0].key] == routing(loaded.model, shapes[0])
    assert len({str(r) for r in routes.values()}) > 1
    # training mode adds noise but still picks k
    m = smol_modules(loaded.model)[0]
    set_shape(loaded.model, shapes[0])
    m.train()
    idx, w = m.route()
    assert idx.numel() == 2 and float(w.sum()) == pytest.approx(1.0, abs=1e-5)


def test_shape_code_interpolates_off_grid_width() -> None:
    code = shape_code(SubnetShape((0, 2), 0.625), 4, (0.5, 0.75, 1.0))
    assert code[:4].tolist() == [1, 0, 1, 0]
    assert code[4:7].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert float(code[7]) == 0.625


@pytest.mark.parametrize("depth,width", [(4, 1.0), (3, 0.75), (2, 0.5), (3, 0.625)])
def test_folded_subnet_equals_adapter_model(loaded: LoadedModel, strategy: Strategy, depth: int, width: float, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    model = loaded.model
    before = model(input_ids=torch.arange(16)[None]).logits
    install_smol(model, SMoLConfig(n_layers=4, widths=strategy.widths, n_experts=4, top_k=2, rank=4))
    _randomise_b(model)
    shape = strategy.shape(depth, width) if width in strategy.widths else SubnetShape(strategy.depth_layers[depth], width)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), adapted_subnet(model, shape, strategy) as m:
        want = m(input_ids=ids).logits
    sub = merge_for_shape(model, shape, strategy)
    assert type(sub) is LlamaForCausalLM and not smol_modules(sub)
    assert sub.config.num_hidden_layers == depth
    with torch.no_grad():
        got = sub(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    sub.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, want, atol=2e-5, rtol=1e-4)
    # the adapters changed the function, and the base model is untouched by merging
    from amoeba_core.subnet import extract_subnet, masked_subnet  # noqa: F401

    set_shape(model, None)
    with torch.no_grad():
        plain = merge_for_shape(_unadapted(loaded), shape, strategy)(input_ids=ids).logits
    assert (plain - want).abs().max() > 1e-3
    assert before.shape[-1] == want.shape[-1]


def _unadapted(loaded: LoadedModel) -> torch.nn.Module:
    from amoeba_core.smol import plain_copy

    return plain_copy(loaded.model, None)


def test_install_errors(loaded: LoadedModel, strategy: Strategy) -> None:
    with pytest.raises(AmoebaError, match="layers"):
        install_smol(loaded.model, SMoLConfig(n_layers=5, widths=(1.0,)))
    with pytest.raises(AmoebaError, match="top-k"):
        SMoLConfig(n_layers=4, widths=(1.0,), n_experts=2, top_k=3)
    install_smol(loaded.model, SMoLConfig(n_layers=4, widths=strategy.widths))
    with pytest.raises(AmoebaError, match="already"):
        install_smol(loaded.model, SMoLConfig(n_layers=4, widths=strategy.widths))
    with pytest.raises(AmoebaError, match="no shape"):
        loaded.model(input_ids=torch.arange(4)[None])
