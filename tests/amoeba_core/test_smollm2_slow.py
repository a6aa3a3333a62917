"""End to end on the real SmolLM2-135M (slow): extraction equals the masked model, HF export reloads
in plain transformers, GGUF tensor shapes and llama.cpp logits, for one-ratio and separate widths.
The model is loaded once for all cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amoeba_core.errors import AmoebaError
from amoeba_core.strategy import Strategy
from tests._parity import assert_gguf_matches, extracted_matches_masked

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smol():  # noqa: ANN201
    from amoeba_core.model import load_model

    try:
        return load_model("smollm2-135m")
    except AmoebaError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smol_strategy(smol) -> Strategy:  # noqa: ANN001
    return Strategy.load(REPO / "benchmarks/results/smollm2_strategy.yaml", expect_fingerprint=smol.fingerprint)


@pytest.mark.parametrize(
    "text,heads,inter",
    [("d24-w0.750", 6, 1152),  # one ratio: 6 of 9 heads and 0.75 of the MLP
     ("d24-a0.667-m0.750", 6, 1152),  # the same network written with separate widths
     ("d24-a1.000-m0.750", 9, 1152)],  # MLP-only cut: every head kept
)
def test_smollm2_extract_export(smol, smol_strategy: Strategy, text: str, heads: int, inter: int,  # noqa: ANN001
                                tmp_path: Path) -> None:
    import gguf
    from transformers import AutoModelForCausalLM

    from amoeba_core.export import export_subnet
    from amoeba_core.subnet import n_params

    shape = smol_strategy.resolve(text)
    ids = smol.tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    sub, ref = extracted_matches_masked(smol.model, shape, smol_strategy, ids, atol=1e-3)
    g = smol.geometry.scaled(shape)
    biases = sum(p.numel() for n, p in sub.named_parameters() if n.endswith(".bias"))
    assert (g.n_heads, g.n_kv_heads, g.intermediate) == (heads, 3, inter)
    assert n_params(sub) == g.n_params() + biases

    hf = export_subnet(smol, smol_strategy, shape, tmp_path / "hf", "hf")
    back = AutoModelForCausalLM.from_pretrained(hf)
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, ref, atol=1e-4)
    path = export_subnet(smol, smol_strategy, shape, tmp_path / "m.gguf", "gguf")
    r = gguf.GGUFReader(str(path))
    t = {x.name: tuple(int(s) for s in x.shape) for x in r.tensors}
    assert r.fields["llama.block_count"].contents() == 24
    assert t["blk.23.attn_q.weight"] == (576, heads * 64) and t["blk.23.attn_k.weight"] == (576, 3 * 64)
    assert t["blk.0.ffn_gate.weight"] == (576, inter) and t["blk.0.ffn_down.weight"] == (inter, 576)
    assert "blk.24.attn_q.weight" not in t
    # bound from f16 rounding, not from one CPU: see tests/_parity.py
    assert_gguf_matches(path, sub, ids, "f16 GGUF in llama.cpp vs fp32 PyTorch", n_ctx=64)
