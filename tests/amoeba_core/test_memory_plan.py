"""The computed memory plan: LLaMA2-7B Stage 2 on a 24 GB GPU, and refusals that name the numbers."""

from __future__ import annotations

import re

import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.geometry import ModelGeometry
from amoeba_core.memory import GIB, lora_params, plan_memory

GB24 = 24 * 10**9


def test_llama2_7b_stage2_on_24gb() -> None:
    g = ModelGeometry.preset("llama2-7b")
    ck = plan_memory(g, "bfloat16", batch=1, seq_len=2048, train=True, lora_rank=64, grad_checkpointing=True,
                     budget_bytes=GB24)
    assert ck.source == "computed"
    assert ck.fits, ck.fmt()
    ck.check()
    assert ck.terms["weights"] == g.n_params() * 2  # 13.5 GB of bf16 weights
    assert ck.terms["lora_adapters"] == lora_params(g, 64) * 4
    assert ck.terms["optimizer_state"] == 2 * ck.terms["lora_adapters"]
    full = plan_memory(g, "bfloat16", batch=1, seq_len=2048, train=True, lora_rank=64, grad_checkpointing=False,
                       budget_bytes=GB24)
    assert full.terms["activations"] > 10 * ck.terms["activations"]
    assert not full.fits
    with pytest.raises(AmoebaError) as e:
        full.check()
    msg = str(e.value)
    assert "\n" not in msg and "does not fit" in msg
    for term in ("weights", "activations", "logits", "lora_adapters", "optimizer_state"):
        assert re.search(rf"{term} \d+\.\d\d", msg), (term, msg)
    assert f"{full.total_bytes / GIB:.2f} GiB needed" in msg and f"{GB24 / GIB:.2f} GiB available" in msg


def test_model_that_cannot_fit_is_refused_on_this_machine() -> None:
    huge = ModelGeometry(n_layers=400, hidden=16384, n_heads=128, n_kv_heads=8, intermediate=53248, vocab=128256,
                         name="huge")
    plan = plan_memory(huge, "float32", batch=1, seq_len=128, device="cpu")  # the real available RAM
    assert plan.available_source.endswith("available RAM")
    with pytest.raises(AmoebaError, match=r"huge .* weights \d+\.\d\d.* GiB needed, .* GiB available on cpu"):
        plan.check()


def test_inference_kv_and_bad_arguments() -> None:
    g = ModelGeometry.preset("smollm2-135m")
    p = plan_memory(g, "float32", batch=2, seq_len=512, kv_cache=True, device="cpu")
    assert p.terms["kv_cache"] == 2 * g.n_layers * g.n_kv_heads * g.head_dim * 2 * 512 * 4
    assert "lora_adapters" not in p.terms and p.to_dict()["source"] == "computed"
    with pytest.raises(AmoebaError, match="unknown dtype"):
        plan_memory(g, "int4", batch=1, seq_len=8)
    with pytest.raises(AmoebaError, match="must be >= 1"):
        plan_memory(g, "float32", batch=0, seq_len=8)
