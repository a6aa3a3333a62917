"""Attention and MLP width as separate axes (``d24-a0.667-m0.750``): extraction equals masking,
heads and channels are cut independently, HF/GGUF export, SMoL shape codes (SmolLM2 cases: test_smollm2_slow.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy
from amoeba_core.subnet import extract_subnet, masked_subnet, n_params
from tests._parity import assert_gguf_matches, extracted_matches_masked

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
# tiny: 4 heads in 2 KV groups, 128 channels -> attention widths 1, 0.5 (2 groups x 1), 0.25
SPLIT = [((0, 1, 2, 3), 0.5, 1.0), ((0, 2, 3), 1.0, 0.5), ((1, 3), 0.25, 0.75), ((0, 1, 3), 0.5, 0.25)]


def _bias_params(sub: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in sub.named_parameters() if n.endswith(".bias"))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layers,attn,mlp", SPLIT)
def test_split_extracted_equals_masked(tiny: LoadedModel, strategy: Strategy, bias_strategy: Strategy,
                                       layers: tuple[int, ...], attn: float, mlp: float, bias: bool) -> None:
    st = bias_strategy if bias else strategy
    shape = SubnetShape(layers, mlp, attn)
    sub, _ = extracted_matches_masked(tiny.model, shape, st, IDS)
    g = tiny.geometry.scaled(shape)
    assert n_params(sub) == g.n_params() + bias * _bias_params(sub)
    assert (sub.config.num_attention_heads, sub.config.intermediate_size) == (round(attn * 4), g.intermediate)
    assert g.intermediate == (128 if mlp == 1.0 else round(mlp * 128 / 32) * 32)


def test_axes_are_sliced_independently(tiny: LoadedModel, strategy: Strategy) -> None:
    """a0.5-m1.0 keeps the heads of w0.5 and every channel; a1.0-m0.5 the reverse."""
    layers = (0, 1, 2, 3)
    heads_only = extract_subnet(tiny.model, SubnetShape(layers, 1.0, 0.5), strategy)
    mlp_only = extract_subnet(tiny.model, SubnetShape(layers, 0.5, 1.0), strategy)
    both = extract_subnet(tiny.model, SubnetShape(layers, 0.5), strategy)
    for i in layers:
        h, m, w = (x.model.layers[i] for x in (heads_only, mlp_only, both))
        assert torch.equal(h.self_attn.q_proj.weight, w.self_attn.q_proj.weight)
        assert torch.equal(h.mlp.down_proj.weight, tiny.model.model.layers[i].mlp.down_proj.weight)
        assert torch.equal(m.mlp.gate_proj.weight, w.mlp.gate_proj.weight)
        assert torch.equal(m.self_attn.o_proj.weight, tiny.model.model.layers[i].self_attn.o_proj.weight)
    # the masked model of an MLP-only cut differs from the full model and from the one-ratio cut
    with torch.no_grad():
        full = tiny.model(input_ids=IDS).logits
        out = {}
        for s in (SubnetShape(layers, 0.5, 1.0), SubnetShape(layers, 0.5)):
            with masked_subnet(tiny.model, s, strategy) as mm:
                out[s.key] = mm(input_ids=IDS, use_cache=False).logits
    a, b = out.values()
    assert not torch.allclose(a, full) and not torch.allclose(a, b)


def test_strategy_resolves_split_text_and_refuses_inexact_heads(strategy: Strategy) -> None:
    s = strategy.resolve("d3-a0.5-m0.75")
    assert (s.depth, s.attn_width, s.width, s.layers) == (3, 0.5, 0.75, strategy.depth_layers[3])
    assert strategy.resolve(s.key) == s and s.key.startswith("d3-a0.500-m0.750-")
    assert strategy.resolve("d3-w0.75").attn_width is None and strategy.resolve("d3-w0.75") != s
    with pytest.raises(AmoebaError, match=r"attention width 0.75 .*allowed: 1.000, 0.500, 0.250"):
        strategy.resolve("d3-a0.75-m0.75")


def test_split_export_hf_reload_and_gguf_shapes(tiny: LoadedModel, bias_strategy: Strategy, tmp_path: Path) -> None:
    import json

    import gguf
    from transformers import AutoModelForCausalLM

    from amoeba_core.export import export_subnet

    shape = bias_strategy.shape(3, 0.75, 0.5)
    ref = extract_subnet(tiny.model, shape, bias_strategy)
    ids = torch.tensor([[5, 70, 80, 90, 100, 33, 44]])
    hf = export_subnet(tiny, bias_strategy, shape, tmp_path / "hf", "hf")
    back = AutoModelForCausalLM.from_pretrained(hf)
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        assert torch.allclose(back(input_ids=ids).logits, want, atol=1e-6)
    meta = json.loads((hf / "amoeba_subnet.json").read_text())
    assert (meta["attn_width"], meta["width"], meta["heads"], meta["kv_heads"]) == (0.5, 0.75, 2, 2)
    path = export_subnet(tiny, bias_strategy, shape, tmp_path / "m.gguf", "gguf", gguf_dtype="f32")
    r = gguf.GGUFReader(str(path))
    g = tiny.geometry.scaled(shape)
    assert (g.n_heads, g.n_kv_heads, g.intermediate) == (2, 2, 96)
    t = {x.name: tuple(int(s) for s in x.shape) for x in r.tensors}
    assert t["blk.0.attn_q.weight"] == (g.hidden, g.n_heads * g.head_dim)
    assert t["blk.0.attn_k.weight"] == (g.hidden, g.n_kv_heads * g.head_dim)
    assert t["blk.2.ffn_up.weight"] == (g.hidden, g.intermediate)
    assert t["blk.2.ffn_down.weight"] == (g.intermediate, g.hidden)
    assert r.fields["llama.attention.head_count"].contents() == 2
    assert r.fields["llama.feed_forward_length"].contents() == 96
    assert_gguf_matches(path, ref, ids, "f32 GGUF, f16 KV cache")


def test_smol_code_separates_networks_not_spellings() -> None:
    from amoeba_core.smol import SMoLConfig

    layers = tuple(range(24))
    cfg = SMoLConfig(n_layers=30, widths=(0.625, 0.75, 0.875, 1.0), n_heads=9, n_kv_heads=3)
    code = {k: cfg.code(SubnetShape(layers, m, a)) for k, (a, m) in
            {"w0.75": (None, 0.75), "a1-m0.75": (1.0, 0.75), "a0.667-m0.75": (0.667, 0.75),
             "a0.333-m0.75": (0.333, 0.75), "a0.667-m1": (0.667, 1.0), "w1": (None, 1.0)}.items()}
    assert all(c.numel() == cfg.code_dim == 30 + 4 + 2 for c in code.values())
    assert not torch.equal(code["w0.75"], code["a1-m0.75"])  # 6 vs 9 heads: the old code could not tell
    assert not torch.equal(code["a0.667-m0.75"], code["a0.333-m0.75"])
    assert not torch.equal(code["a0.667-m1"], code["w1"])
    # SmolLM2's w0.75 keeps 6 of 9 heads and 1152 channels: the very network a0.667-m0.75 names
    assert torch.equal(code["w0.75"], code["a0.667-m0.75"])
    assert float(code["a1-m0.75"][-1]) == 1.0 and float(code["w0.75"][-1]) == pytest.approx(6 / 9)
    # adapters saved before version 2 keep their code length and values, and refuse separate widths
    old = SMoLConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k not in ("code_version", "n_heads", "n_kv_heads")})
    assert old.code_version == 1 and old.code_dim == 30 + 4 + 1
    assert torch.equal(old.code(SubnetShape(layers, 0.75)), code["w0.75"][:-1])
    with pytest.raises(AmoebaError, match="version 1"):
        old.code(SubnetShape(layers, 0.75, 0.667))


def test_smol_folded_split_shape_equals_adapter_model(strategy: Strategy) -> None:
    from amoeba_core.model import load_model
    from amoeba_core.smol import SMoLConfig, adapted_subnet, install_smol, merge_for_shape, smol_modules

    loaded = load_model("tiny")  # its own copy: adapters are installed in place
    model = loaded.model
    cfg = SMoLConfig(n_layers=4, widths=strategy.widths, n_experts=4, top_k=2, rank=4)
    install_smol(model, cfg)
    assert (cfg.n_heads, cfg.n_kv_heads) == (4, 2)
    g = torch.Generator().manual_seed(1)
    for m in smol_modules(model):
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    shape = strategy.shape(3, 0.75, 0.5)
    with torch.no_grad(), adapted_subnet(model, shape, strategy) as m:
        want = m(input_ids=IDS).logits
    sub = merge_for_shape(model, shape, strategy)
    assert sub.config.num_attention_heads == 2 and not smol_modules(sub)
    with torch.no_grad():
        torch.testing.assert_close(sub(input_ids=IDS).logits, want, atol=2e-5, rtol=1e-4)


def test_cli_eval_and_export_a_separate_width_shape(strategy: Strategy, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from amoeba.cli import main

    def run(argv: list[str]) -> int:
        with pytest.raises(SystemExit) as e:
            main(argv)
        return int(e.value.code or 0)

    path = strategy.save(tmp_path / "strategy.yaml")
    assert run(["eval", "--strategy", str(path), "--shape", "d3-a0.5-m1", "--windows", "2", "--seq-len", "32"]) == 0
    assert "d3-a0.500-m1.000" in capsys.readouterr().out
    assert run(["export", "--strategy", str(path), "--shape", "d3-a0.5-m0.75", "--out", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (2, 2, 96)
    capsys.readouterr()
    assert run(["export", "--strategy", str(path), "--shape", "d3-a0.75-m0.75", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: attention width 0.75")
    assert not (tmp_path / "x").exists()
