"""Architecture families through transformers' own classes: LLaMA-3 (rope scaling), Mistral, Qwen2
(q/k/v biases), Qwen3 (q/k RMSNorm). Random-weight tiny GQA models (4 heads, 2 KV heads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from amoeba_core.errors import AmoebaError
from amoeba_core.export import export_subnet
from amoeba_core.geometry import FAMILIES, ModelGeometry
from amoeba_core.model import LoadedModel, load_model, random_model, tiny_tokenizer, weights_fingerprint
from amoeba_core.shape import SubnetShape
from amoeba_core.subnet import extract_subnet
from tests._parity import assert_gguf_matches, extracted_matches_masked
from tests.amoeba_core.conftest import shuffled_strategy

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
FAMILY_GEOMETRIES = {
    "llama3": dict(model_type="llama", rope_scaling=LLAMA3_ROPE, rope_theta=500000.0),
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2", attention_bias=True, tie_embeddings=True, rope_theta=1000000.0),
    "qwen3": dict(model_type="qwen3", qk_norm=True, head_dim=32, rms_eps=1e-6),
}
CLASSES = {"llama3": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "qwen3": "Qwen3ForCausalLM"}
IDS = torch.tensor([[5, 70, 80, 90, 100, 33, 44, 200, 17, 3]])


def _geometry(family: str) -> ModelGeometry:
    return ModelGeometry(n_layers=3, hidden=64, n_heads=4, n_kv_heads=2, intermediate=128, vocab=256,
                         max_position=512, name=family, **FAMILY_GEOMETRIES[family])


@pytest.fixture(scope="module", params=list(FAMILY_GEOMETRIES))
def family(request: pytest.FixtureRequest) -> tuple[str, LoadedModel]:
    torch.set_num_threads(1)
    g = _geometry(request.param)
    model = random_model(g, seed=1)
    model.config.use_cache = False
    loaded = LoadedModel(model, tiny_tokenizer(256), g, weights_fingerprint(model), request.param)
    return request.param, loaded


def test_random_model_is_the_family_class(family: tuple[str, LoadedModel]) -> None:
    name, loaded = family
    assert type(loaded.model).__name__ == CLASSES[name]
    back = ModelGeometry.from_hf_config(loaded.model.config.to_dict(), name=name)
    assert back == loaded.geometry
    assert back.n_params() == sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values())
    attn = loaded.model.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == (name == "qwen2")
    assert hasattr(attn, "q_norm") == (name == "qwen3")


@pytest.mark.parametrize("layers,attn_width,mlp", [((0, 1, 2), 0.5, 0.75), ((0, 2), 1.0, 0.5), ((1,), 0.25, 1.0)])
def test_extracted_equals_masked(family: tuple[str, LoadedModel], layers: tuple[int, ...], attn_width: float,
                                 mlp: float) -> None:
    name, loaded = family
    st = shuffled_strategy(loaded, seed=3)
    shape = SubnetShape(layers, mlp, attn_width)
    sub, _ = extracted_matches_masked(loaded.model, shape, st, IDS)
    assert type(sub) is type(loaded.model)
    g = loaded.geometry.scaled(shape)
    q = sub.model.layers[0].self_attn.q_proj
    assert q.weight.shape[0] == g.n_heads * g.head_dim
    if name == "qwen2":
        assert q.bias.shape == (g.n_heads * g.head_dim,)
        assert sub.model.layers[0].self_attn.k_proj.bias.shape == (g.n_kv_heads * g.head_dim,)
    assert sum(p.numel() for p in {id(p): p for p in sub.parameters()}.values()) == g.n_params()


def test_hf_export_reloads_as_same_architecture(family: tuple[str, LoadedModel], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    name, loaded = family
    st = shuffled_strategy(loaded, seed=4)
    shape = SubnetShape((0, 2), 0.75, 0.5)
    ref = extract_subnet(loaded.model, shape, st)
    out = export_subnet(loaded, st, shape, tmp_path / "hf", "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [CLASSES[name]]
    back = AutoModelForCausalLM.from_pretrained(out)
    assert type(back).__name__ == CLASSES[name]
    with torch.no_grad():
        assert torch.allclose(back(input_ids=IDS).logits, ref(input_ids=IDS).logits, atol=1e-6)
    again = load_model(str(out))  # load_model goes through AutoModelForCausalLM too
    assert type(again.model).__name__ == CLASSES[name] and again.geometry.model_type == loaded.geometry.model_type
    if name == "llama3":
        assert again.geometry.rope_scaling_dict["rope_type"] == "llama3"


@pytest.mark.parametrize("attn_width", [1.0, 0.5])
def test_gguf_export_runs_in_llama_cpp(family: tuple[str, LoadedModel], tmp_path: Path, attn_width: float) -> None:
    import gguf

    name, loaded = family
    st = shuffled_strategy(loaded, seed=5)
    shape = SubnetShape((0, 1, 2), 0.75, attn_width)
    ref = extract_subnet(loaded.model, shape, st)
    path = export_subnet(loaded, st, shape, tmp_path / "m.gguf", "gguf", gguf_dtype="f32")
    r = gguf.GGUFReader(str(path))
    arch = FAMILIES[loaded.geometry.model_type][2]
    if name == "qwen2" and attn_width < 1:
        arch = "llama"  # llama.cpp's qwen2 graph needs heads x head_dim == hidden (amoeba_core.export)
    assert r.fields["general.architecture"].contents() == arch
    assert r.fields[f"{arch}.block_count"].contents() == 3
    tensors = {t.name for t in r.tensors}
    assert ("blk.0.attn_q.bias" in tensors) == (name == "qwen2")
    assert ("blk.0.attn_q_norm.weight" in tensors and "blk.0.attn_k_norm.weight" in tensors) == (name == "qwen3")
    assert ("rope_freqs.weight" in tensors) == (name == "llama3")
    back = ModelGeometry.from_gguf(path)
    assert back.model_type == ("qwen2" if arch == "qwen2" else "llama" if arch == "llama" else name)
    assert_gguf_matches(path, ref, IDS, f"{name}: f32 GGUF, f16 KV cache")


def test_unsupported_architecture_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma", "num_hidden_layers": 2}))
    with pytest.raises(AmoebaError, match="unsupported architecture 'gemma'; supported: llama, mistral, qwen2, qwen3"):
        load_model(str(tmp_path))
    with pytest.raises(AmoebaError, match="supported: llama"):
        ModelGeometry.from_hf_config(tmp_path)


def test_cli_select_eval_export_a_qwen3_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from amoeba.cli import main
    from amoeba_core.strategy import Strategy

    def run(argv: list[str]) -> int:
        with pytest.raises(SystemExit) as e:
            main(argv)
        return int(e.value.code or 0)

    torch.set_num_threads(1)
    folder = tmp_path / "qwen3"
    random_model(_geometry("qwen3"), seed=2).save_pretrained(folder)
    tiny_tokenizer(256).save_pretrained(folder)
    out = tmp_path / "s.yaml"
    assert run(["select", "--model", str(folder), "--min-depth", "2", "--widths", "1,0.5", "--out", str(out),
                "--calib-seq-len", "32", "--stats-windows", "1", "--val-windows", "1", "--device", "cpu",
                "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "memory plan (computed)" in printed and "fits" in printed
    strat = Strategy.load(out)
    assert strat.model_geometry.model_type == "qwen3" and strat.width_metric != "flap-bias"
    assert run(["eval", "--strategy", str(out), "--shape", "d2-a0.500-m0.500", "--windows", "2", "--seq-len", "32",
                "--device", "cpu"]) == 0
    assert run(["export", "--strategy", str(out), "--shape", "d2-a0.500-m0.500", "--format", "gguf", "--out",
                str(tmp_path / "q.gguf"), "--device", "cpu"]) == 0
    assert ModelGeometry.from_gguf(tmp_path / "q.gguf").model_type == "qwen3"
