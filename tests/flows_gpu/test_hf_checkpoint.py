"""The HF checkpoint folder TensorRT-LLM and MLC start from: loads back with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.flows._hf_checkpoint import checkpoint_name, tokenizer_json, write_hf_checkpoint


def test_checkpoint_round_trips_through_transformers(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = ModelGeometry.preset("tiny").scaled_dims(2, 0.75)
    out = write_hf_checkpoint(g, tmp_path / checkpoint_name(g, "float16"), "float16")
    assert ModelGeometry.from_hf_config(out).fingerprint == g.fingerprint
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float16
    assert model.config.num_hidden_layers == 2 and model.config.intermediate_size == g.intermediate
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == g.vocab
    assert tok("t5 t7 t255")["input_ids"] == [5, 7, 255]
    assert tok.eos_token_id == 2 and tok.bos_token_id == 1


def test_checkpoint_is_reused_and_rewritten_when_geometry_differs(tmp_path: Path) -> None:
    g = ModelGeometry.preset("tiny").scaled_dims(1, 1.0)
    out = write_hf_checkpoint(g, tmp_path / "ck", "float32")
    stamp = next(out.glob("*.safetensors")).stat().st_mtime_ns
    assert write_hf_checkpoint(g, out, "float32") == out
    assert next(out.glob("*.safetensors")).stat().st_mtime_ns == stamp
    g2 = ModelGeometry.preset("tiny").scaled_dims(2, 1.0)
    write_hf_checkpoint(g2, out, "float32")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def test_checkpoint_names_differ_by_shape_and_dtype() -> None:
    base = ModelGeometry.preset("tiny")
    names = {checkpoint_name(base.scaled_dims(d, w), dt) for d in (1, 2) for w in (1.0, 0.5) for dt in ("float16", "bfloat16")}
    assert len(names) == 8


def test_tokenizer_has_exactly_vocab_tokens() -> None:
    vocab = tokenizer_json(300)["model"]["vocab"]
    assert len(vocab) == 300 and sorted(vocab.values()) == list(range(300))
    with pytest.raises(AmoebaError):
        tokenizer_json(2)
    with pytest.raises(AmoebaError):
        write_hf_checkpoint(ModelGeometry.preset("tiny"), "/nonexistent/x", "int8")
