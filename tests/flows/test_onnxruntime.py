"""ONNX Runtime flow: explicit-cache export equals transformers, real prefill/decode with IOBinding."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx

import torch  # noqa: E402

from amoeba_core.errors import AmoebaError, NotInstalledError  # noqa: E402
from amoeba_core.model import random_llama  # noqa: E402
from amoeba_core.shape import ModelGeometry  # noqa: E402
from profiler.flows import FlowConfig, Workload, make_flow  # noqa: E402
from profiler.flows.onnxruntime import DECODE, OnnxRuntimeFlow, OrtArtifact  # noqa: E402
from tests._parity import FP32_REL_RMS, assert_logits_match  # noqa: E402

GEOM = ModelGeometry.preset("tiny").scaled_dims(2, 0.5)  # GQA cut: 2 heads of 16, MLP 64


@pytest.fixture(scope="module")
def built(flow_cache: Path) -> tuple[OnnxRuntimeFlow, OrtArtifact]:
    flow = make_flow("onnxruntime", FlowConfig(threads=1, options={"cache_dir": str(flow_cache)}))
    art = flow.build(GEOM)
    yield flow, art  # type: ignore[misc]
    flow.close(art)


def test_ort_logits_equal_pytorch(built: tuple[OnnxRuntimeFlow, OrtArtifact]) -> None:
    _, art = built
    hf = random_llama(GEOM, "float32", seed=0)  # the exported weights (same seed)
    past_names = [i.name for i in art.decode.get_inputs()][1:]
    for n in (5, 40):  # dynamic lengths: one export serves every prompt length
        ids = torch.randint(0, GEOM.vocab, (1, n + 1), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref_prefill = hf(ids[:, :n]).logits[0, -1].numpy()
            ref_decode = hf(ids).logits[0, -1].numpy()
        out = art.prefill.run(None, {"input_ids": ids[:, :n].numpy()})
        assert_logits_match(out[0][0], ref_prefill, FP32_REL_RMS, "fp32 ONNX Runtime vs fp32 PyTorch")
        assert out[1].shape == (1, GEOM.n_kv_heads, n, GEOM.head_dim)
        dec = art.decode.run(None, {"input_ids": ids[:, n:].numpy(), **dict(zip(past_names, out[1:]))})
        assert_logits_match(dec[0][0], ref_decode, FP32_REL_RMS, "fp32 ONNX Runtime vs fp32 PyTorch")
        assert dec[1].shape == (1, GEOM.n_kv_heads, n + 1, GEOM.head_dim)


def test_prefill_and_decode_run_for_real(built: tuple[OnnxRuntimeFlow, OrtArtifact]) -> None:
    flow, art = built
    assert art.prefill.get_providers() == ["CPUExecutionProvider"]
    pre = [flow.run_once(art, Workload("prefill", 128)) for _ in range(5)]
    dec = [flow.run_once(art, Workload("decode", 128)) for _ in range(5)]
    assert all(t > 0 and math.isfinite(t) for t in pre + dec)
    assert min(dec) < min(pre)


def test_decode_past_stays_on_prompt_len(built: tuple[OnnxRuntimeFlow, OrtArtifact]) -> None:
    flow, art = built
    for p in (8, 8, 33):
        flow.run_once(art, Workload("decode", p))
    assert art.pasts[8][0].shape() == [1, GEOM.n_kv_heads, 8, GEOM.head_dim]  # reused, never grown
    assert art.pasts[33][0].device_name() == "cpu"
    with pytest.raises(AmoebaError, match="exceeds"):
        flow.run_once(art, Workload("decode", GEOM.max_position))


def test_export_is_cached(built: tuple[OnnxRuntimeFlow, OrtArtifact], flow_cache: Path) -> None:
    flow, art = built
    mtime = (art.folder / DECODE).stat().st_mtime_ns
    again = flow.build(GEOM)
    assert again.folder == art.folder and (again.folder / DECODE).stat().st_mtime_ns == mtime
    assert not list((flow_cache).glob("**/.tmp-*"))


def test_describes_itself_and_rejects_bad_config(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = OnnxRuntimeFlow(FlowConfig(threads=2))
    env = flow.environment()
    assert env["flow"] == "onnxruntime" and env["provider"] == "CPUExecutionProvider" and flow.variant == "float32"
    with pytest.raises(AmoebaError, match="float32"):
        OnnxRuntimeFlow(FlowConfig(dtype="float16"))
    with pytest.raises(AmoebaError, match="exporter"):
        OnnxRuntimeFlow(FlowConfig(options={"exporter": "optimum"}))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(NotInstalledError, match="onnxruntime-gpu"):
            OnnxRuntimeFlow(FlowConfig(device="cuda"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(NotInstalledError, match=r"pip install 'amoeba-deploy\[onnx\]'"):
        OnnxRuntimeFlow.check_available()
