"""MLC-LLM adapter: the commands and engine/request configs it generates, and its not-installed error."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from amoeba_core.errors import AmoebaError, NotInstalledError
from profiler.flows import FlowConfig, flow_class, make_flow
from profiler.flows import mlc_llm as mlc

HAVE_MLC = importlib.util.find_spec("mlc_llm") is not None


@pytest.mark.skipif(HAVE_MLC, reason="MLC-LLM is installed here")
def test_missing_runtime_says_how_to_install() -> None:
    with pytest.raises(NotInstalledError) as e:
        make_flow("mlc_llm", FlowConfig(dtype="float16", device="cuda"))
    msg = str(e.value)
    assert "not installed" in msg and "-f https://mlc.ai/wheels mlc-llm-nightly-cu128 mlc-ai-nightly-cu128" in msg


def test_registry_resolves_the_class() -> None:
    assert flow_class("mlc_llm") is mlc.MlcLlmFlow


def test_pipeline_commands() -> None:
    conv, gen, comp = mlc.pipeline_commands("/hf", "/out", "/out/lib.so", "q4f16_1", "cuda", 1024)
    py = [sys.executable, "-m", "mlc_llm"]
    assert conv == py + ["convert_weight", "/hf", "--quantization", "q4f16_1", "--model-type", "llama",
                         "--device", "cuda", "-o", "/out"]
    assert gen[:5] == py + ["gen_config", "/hf"]
    assert gen[gen.index("--conv-template") + 1] == "LM"  # plain base model, required flag
    assert gen[gen.index("--context-window-size") + 1] == "1024"
    assert gen[gen.index("--prefill-chunk-size") + 1] == "1024"
    assert gen[gen.index("--max-batch-size") + 1] == "1" and gen[-2:] == ["-o", "/out"]
    assert comp == py + ["compile", "/out/mlc-chat-config.json", "--device", "cuda", "-o", "/out/lib.so"]
    with pytest.raises(AmoebaError, match="quantization"):
        mlc.convert_weight_command("/hf", "/out", "q4f16_9")
    with pytest.raises(AmoebaError):
        mlc.gen_config_command("/hf", "/out", context_window=1)


def test_engine_and_request_configs() -> None:
    assert mlc.engine_kwargs("/out", "/out/lib.so") == {"model": "/out", "device": "cuda",
                                                        "model_lib": "/out/lib.so", "mode": "interactive"}
    assert mlc.engine_config_kwargs() == {"prefix_cache_mode": "disable"}
    req = mlc.request_kwargs([5, 6, 7], 16)
    assert req["prompt"] == [5, 6, 7] and req["max_tokens"] == 16 and req["stream"] is True
    assert req["stream_options"] == {"include_usage": True}
    assert req["extra_body"] == {"debug_config": {"ignore_eos": True}}
    with pytest.raises(AmoebaError):
        mlc.request_kwargs([1], 0)


def test_timings_from_usage_extra() -> None:
    extra = {"ttft_s": 0.0125, "decode_tokens_per_s": 250.0, "prefill_tokens_per_s": 1e4}
    assert mlc.seconds_from_usage(extra, "prefill") == pytest.approx(0.0125)
    assert mlc.seconds_from_usage(extra, "decode") == pytest.approx(0.004)
    with pytest.raises(AmoebaError, match="decode_tokens_per_s"):
        mlc.seconds_from_usage({"ttft_s": 1.0}, "decode")
    with pytest.raises(AmoebaError):
        mlc.seconds_from_usage({"decode_tokens_per_s": 0.0}, "decode")


def test_prompts_are_fresh_and_in_vocab() -> None:
    a, b = mlc.random_prompt(64, 300, 1), mlc.random_prompt(64, 300, 2)
    assert len(a) == 64 and a != b and all(3 <= t < 300 for t in a + b)


def test_flow_options_and_variant() -> None:
    f = mlc.MlcLlmFlow(FlowConfig(dtype="float16", device="cuda", options={"quantization": "q4f16_1"}))
    assert f.variant == "q4f16_1" and mlc.hf_dtype("q4f16_1") == "float16" and mlc.hf_dtype("q0f32") == "float32"
    with pytest.raises(AmoebaError, match="quantization"):
        mlc.MlcLlmFlow(FlowConfig(device="cuda", options={"quantization": "int3"}))
    with pytest.raises(AmoebaError, match="cuda"):
        mlc.MlcLlmFlow(FlowConfig(device="cpu"))
