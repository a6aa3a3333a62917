"""`--adapters`: Stage 1's evaluator, export and search objective use the fine-tuned adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amoeba_core.evaluate import Evaluator
from amoeba_core.export import export_subnet
from amoeba_core.finetune import FinetuneConfig, apply_adapters, finetune, perplexity
from amoeba_core.model import LoadedModel, load_model
from amoeba_core.strategy import Strategy


def test_evaluator_and_export_use_adapters(loaded: LoadedModel, strategy: Strategy, tmp_path: Path) -> None:
    cfg = FinetuneConfig(steps=6, k=3, seq_len=32, batch=2, lr=2e-2, warmup=1, rank=4, experts=3, top_k=2)
    finetune(loaded, strategy, cfg, tmp_path / "ft")
    shape = strategy.shape(3, 0.75)
    cache = tmp_path / "scores.jsonl"

    plain = Evaluator(load_model("tiny"), strategy, split="val", seq_len=32, max_windows=4, cache=cache)
    adapted_loaded = apply_adapters(load_model("tiny"), strategy, tmp_path / "ft")
    adapted = Evaluator(adapted_loaded, strategy, split="val", seq_len=32, max_windows=4, cache=cache)
    p0, p1 = plain.score(shape), adapted.score(shape)
    assert not p1.cached  # the plain model's cached score is not reused for the adapted one
    assert p1.ppl != pytest.approx(p0.ppl, rel=1e-4)
    # the evaluator's layer-by-layer engine agrees with a plain forward of the adapted model
    assert p1.ppl == pytest.approx(perplexity(adapted_loaded.model, shape, strategy, adapted.ids), rel=1e-4)

    out = export_subnet(adapted_loaded, strategy, shape, tmp_path / "hf", "hf")
    assert json.loads((out / "amoeba_subnet.json").read_text())["adapters"] == adapted_loaded.adapters
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out)
    assert perplexity(exported, exported_shape(exported), None, adapted.ids) == pytest.approx(p1.ppl, rel=1e-4)


def exported_shape(model):  # noqa: ANN001, ANN201 - the whole exported model is its own full shape
    from amoeba_core.shape import SubnetShape

    return SubnetShape.first(model.config.num_hidden_layers, 1.0)
