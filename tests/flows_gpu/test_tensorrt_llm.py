"""TensorRT-LLM adapter: the configs and command lines it generates, and its not-installed error."""

from __future__ import annotations

import importlib.util
import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from amoeba_core.errors import AmoebaError, NotInstalledError
from profiler.flows import FlowConfig, flow_class, make_flow
from profiler.flows import tensorrt_llm as trt

HAVE_TRT = importlib.util.find_spec("tensorrt_llm") is not None


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT-LLM is installed here")
def test_missing_runtime_says_how_to_install() -> None:
    with pytest.raises(NotInstalledError) as e:
        make_flow("tensorrt_llm", FlowConfig(dtype="float16", device="cuda"))
    msg = str(e.value)
    assert "not installed" in msg and "pip install tensorrt_llm" in msg and "libopenmpi-dev" in msg


def test_registry_resolves_the_class() -> None:
    assert flow_class("tensorrt_llm") is trt.TensorRtLlmFlow


def test_prefix_reuse_off_and_fixed_output_length() -> None:
    assert trt.kv_cache_kwargs() == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.3}
    sp = trt.sampling_kwargs(16)
    assert sp["max_tokens"] == 16 and sp["ignore_eos"] is True and sp["end_id"] == -1
    assert sp["return_perf_metrics"] is True and sp["detokenize"] is False
    with pytest.raises(AmoebaError):
        trt.sampling_kwargs(0)
    with pytest.raises(AmoebaError):
        trt.kv_cache_kwargs(1.5)


def test_llm_kwargs_pytorch_and_engine_backends() -> None:
    kw = trt.llm_kwargs("/ck", prompt_len=512, decode_tokens=16, dtype="bfloat16")
    assert kw["model"] == "/ck" and kw["dtype"] == "bfloat16" and kw["skip_tokenizer_init"] is True
    assert kw["max_batch_size"] == 1 and kw["max_seq_len"] == 528 and kw["max_num_tokens"] == 512
    assert kw["disable_overlap_scheduler"] is True and kw["cuda_graph_config"] == {"batch_sizes": [1]}
    assert trt.llm_kwargs("/ck", 64, 16)["max_num_tokens"] == 256  # prompt always fits one chunk
    eng = trt.llm_kwargs("/ck", 128, 16, backend="tensorrt")
    assert "max_seq_len" not in eng and "cuda_graph_config" not in eng  # TRT path: limits go to BuildConfig
    assert trt.build_config_kwargs(128, 16) == {"max_batch_size": 1, "max_input_len": 128, "max_seq_len": 144,
                                                "max_num_tokens": 256}
    with pytest.raises(AmoebaError, match="dtype"):
        trt.llm_kwargs("/ck", 128, 16, dtype="float32")
    with pytest.raises(AmoebaError, match="backend"):
        trt.llm_kwargs("/ck", 128, 16, backend="onnx")


def test_command_lines() -> None:
    assert trt.convert_checkpoint_command("conv.py", "/hf", "/ckpt") == [
        "python", "conv.py", "--model_dir", "/hf", "--output_dir", "/ckpt", "--dtype", "float16"]
    b = trt.trtllm_build_command("/ckpt", "/eng", 128, 16)
    assert b[:5] == ["trtllm-build", "--checkpoint_dir", "/ckpt", "--output_dir", "/eng"]
    assert b[b.index("--max_seq_len") + 1] == "144" and b[b.index("--max_input_len") + 1] == "128"
    bench = trt.trtllm_bench_command("llama2-7b", "/hf", "d.jsonl", "r.json")
    assert bench[:5] == ["trtllm-bench", "--model", "llama2-7b", "--model_path", "/hf"]
    assert bench[5] == "latency" and bench[bench.index("--backend") + 1] == "pytorch"
    eng = trt.trtllm_bench_command("m", "/hf", "d.jsonl", "r.json", backend="tensorrt", engine_dir="/eng")
    assert eng[-2:] == ["--engine_dir", "/eng"]
    with pytest.raises(AmoebaError, match="engine_dir"):
        trt.trtllm_bench_command("m", "/hf", "d.jsonl", "r.json", backend="tensorrt")


def test_bench_dataset_jsonl(tmp_path: Path) -> None:
    p = trt.write_bench_dataset(tmp_path / "d.jsonl", prompt_len=32, output_len=8, num_requests=5, vocab=256)
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == list(range(5))
    assert all(len(r["input_ids"]) == 32 and r["output_tokens"] == 8 for r in rows)
    assert all(3 <= t < 256 for r in rows for t in r["input_ids"])
    assert len({tuple(r["input_ids"]) for r in rows}) == 5  # distinct prompts: no prefix reuse


def test_ttft_tpot_from_timing_metrics() -> None:
    t0 = timedelta(seconds=10)
    tm = SimpleNamespace(arrival_time=t0, first_token_time=t0 + timedelta(milliseconds=25),
                         last_token_time=t0 + timedelta(milliseconds=25 + 15 * 4))
    ttft, tpot = trt.ttft_tpot(tm, 16)
    assert ttft == pytest.approx(0.025) and tpot == pytest.approx(0.004)
    assert trt.ttft_tpot(tm, 1)[1] is None


def test_flow_validates_options_before_touching_the_runtime() -> None:
    cls = trt.TensorRtLlmFlow
    assert cls(FlowConfig(dtype="float16", device="cuda")).variant == "pytorch-float16"
    assert cls(FlowConfig(dtype="bfloat16", device="cuda", options={"backend": "tensorrt"})).variant == "tensorrt-bfloat16"
    with pytest.raises(AmoebaError, match="cuda"):
        cls(FlowConfig(dtype="float16", device="cpu"))
    with pytest.raises(AmoebaError, match="dtype"):
        cls(FlowConfig(dtype="float32", device="cuda"))
    with pytest.raises(AmoebaError, match="decode_tokens"):
        cls(FlowConfig(dtype="float16", device="cuda", options={"decode_tokens": 1}))
