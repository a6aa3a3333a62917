"""llama.cpp flow: GGUF writing, real prefill/decode on a tiny geometry, shallow copies of SmolLM2."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llamacpp

import gguf  # noqa: E402

from amoeba_core.errors import AmoebaError, NotInstalledError  # noqa: E402
from amoeba_core.shape import ModelGeometry  # noqa: E402
from profiler.flows import FlowConfig, Workload, make_flow  # noqa: E402
from profiler.flows._gguf import cached_random_gguf, shallow_gguf, write_random_gguf  # noqa: E402
from profiler.flows.llamacpp import LlamaCppFlow  # noqa: E402

TINY = ModelGeometry.preset("tiny")


def _flow(cache: Path, quant: str) -> LlamaCppFlow:
    config = FlowConfig(threads=1, options={"quant": quant, "cache_dir": str(cache)})
    return make_flow("llamacpp", config)  # type: ignore[return-value]


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0"])
def test_tiny_prefill_and_decode_run_for_real(flow_cache: Path, quant: str) -> None:
    flow = _flow(flow_cache, quant)
    assert flow.variant == quant
    art = flow.build(TINY)
    try:
        pre = [flow.run_once(art, Workload("prefill", 128)) for _ in range(5)]
        dec = [flow.run_once(art, Workload("decode", 128)) for _ in range(5)]
        assert all(t > 0 and math.isfinite(t) for t in pre + dec)
        assert min(dec) < min(pre)  # one token vs 128 tokens
    finally:
        flow.close(art)
    assert art.llm is None


def test_decode_attends_to_exactly_prompt_len(flow_cache: Path) -> None:
    flow = _flow(flow_cache, "f16")
    art = flow.build(TINY.scaled_dims(2, 1.0))
    mem = lambda: llama_cpp.llama_get_memory(art.llm._ctx.ctx)  # noqa: E731
    for p in (24, 24, 60, 10):
        flow.run_once(art, Workload("decode", p))
        # cached positions 0..p-1 plus the timed token at position p, nothing beyond
        assert llama_cpp.llama_memory_seq_pos_max(mem(), 0) == p
    flow.run_once(art, Workload("prefill", 30))
    assert llama_cpp.llama_memory_seq_pos_max(mem(), 0) == 29
    flow.run_once(art, Workload("decode", 300))  # beyond the first context: re-created larger
    assert art.n_ctx >= 301 and llama_cpp.llama_memory_seq_pos_max(mem(), 0) == 300
    with pytest.raises(AmoebaError, match="exceeds"):
        flow.run_once(art, Workload("decode", TINY.max_position))
    flow.close(art)


def test_written_gguf_has_geometry_and_loads(tmp_path: Path) -> None:
    g = TINY.scaled_dims(3, 0.5)  # 2 heads of 16: head_dim != hidden // n_heads
    path = write_random_gguf(g, tmp_path / "m.gguf", "q8_0")
    back = ModelGeometry.from_gguf(path)
    assert back.rms_eps == pytest.approx(g.rms_eps, rel=1e-6)  # stored as float32
    assert replace(back, rms_eps=g.rms_eps) == g
    shapes = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}
    Q = gguf.GGMLQuantizationType
    assert shapes["blk.2.attn_q.weight"] == ((64, 32), Q.Q8_0)  # ggml ne order: (in, out)
    assert shapes["blk.0.attn_k.weight"] == ((64, 32), Q.Q8_0)
    assert shapes["blk.1.ffn_down.weight"] == ((64, 64), Q.Q8_0)
    assert shapes["blk.0.attn_norm.weight"] == ((64,), Q.F32)
    assert "blk.3.attn_q.weight" not in shapes and "output.weight" in shapes
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False)
    try:
        model = llm._model.model
        assert llama_cpp.llama_model_n_layer(model) == 3
        assert llama_cpp.llama_model_n_head(model) == 2 and llama_cpp.llama_model_n_head_kv(model) == 2
        assert llama_cpp.llama_model_n_embd(model) == 64 and llm.n_vocab() == 256
        llm.eval([5, 6, 7])
    finally:
        llm.close()


def test_rows_not_multiple_of_32_fall_back_to_f16(tmp_path: Path) -> None:
    g = ModelGeometry(n_layers=1, hidden=48, n_heads=3, n_kv_heads=1, intermediate=96, vocab=64, name="odd")
    path = write_random_gguf(g, tmp_path / "odd.gguf", "q4_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.ffn_gate.weight"] == gguf.GGMLQuantizationType.F16  # rows of 48
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_0  # rows of 96
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=16, verbose=False)
    llm.eval([3, 4])
    llm.close()


def test_cache_reuses_the_file(flow_cache: Path) -> None:
    g = TINY.scaled_dims(1, 0.5)
    a = cached_random_gguf(g, "q4_0", cache_dir=flow_cache)
    ino = a.stat().st_ino
    b = cached_random_gguf(g, "q4_0", cache_dir=flow_cache)
    assert a == b and b.stat().st_ino == ino  # reused, not rewritten (the use only touches its mtime)
    assert cached_random_gguf(g, "f16", cache_dir=flow_cache) != a
    assert not list(flow_cache.glob(".tmp-*"))


def test_bad_options_and_missing_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AmoebaError, match="quant"):
        LlamaCppFlow(FlowConfig(options={"quant": "q5_k"}))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import now fails as if not installed
    hint = r"llama-cpp-python is not installed: pip install 'amoeba-deploy\[llamacpp\]'"
    with pytest.raises(NotInstalledError, match=hint):
        LlamaCppFlow.check_available()


@pytest.mark.slow
def test_shallow_copy_of_real_smollm2(tmp_path: Path) -> None:
    from amoeba_core.model import smollm2_gguf_path

    try:
        src = smollm2_gguf_path()
    except NotInstalledError as e:
        pytest.skip(str(e))
    out = shallow_gguf(src, [0, 1, 28, 29], tmp_path / "d4.gguf")
    assert out.stat().st_size < src.stat().st_size / 2
    with pytest.raises(AmoebaError, match="keep_layers"):
        shallow_gguf(src, [30], tmp_path / "bad.gguf")
    full = ModelGeometry.preset("smollm2-135m")
    # the flow runs the real shallow file (llama.cpp loads it, 4 blocks, real vocab; build checks sizes)
    flow = make_flow("llamacpp", FlowConfig(threads=1, options={"gguf": str(out)}))
    art = flow.build(full.scaled_dims(4, 1.0))
    assert llama_cpp.llama_model_n_layer(art.llm._model.model) == 4 and art.llm.n_vocab() == 49152
    assert art.llm.metadata["llama.block_count"] == "4" and art.llm.metadata["tokenizer.ggml.model"] == "gpt2"
    assert flow.run_once(art, Workload("prefill", 16)) > 0 and flow.run_once(art, Workload("decode", 16)) > 0
    flow.close(art)


def test_given_gguf_must_match_geometry(tmp_path: Path) -> None:
    path = write_random_gguf(TINY.scaled_dims(2, 1.0), tmp_path / "d2.gguf", "f16")
    flow = make_flow("llamacpp", FlowConfig(threads=1, options={"gguf": str(path)}))
    art = flow.build(TINY.scaled_dims(2, 1.0))
    assert flow.run_once(art, Workload("prefill", 8)) > 0
    flow.close(art)
    with pytest.raises(AmoebaError, match="geometry"):
        flow.build(TINY.scaled_dims(3, 1.0))
