"""One contract for every flow that can run here, on a tiny geometry, for real.

Flows other helpers add to ``profiler.flows.FLOWS`` are picked up automatically when their
runtime is installed (``check_available`` passes).
"""

from __future__ import annotations

import math

import pytest

from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.shape import ModelGeometry
from profiler.flows import FLOWS, FlowConfig, Workload, flow_class, make_flow


def _available() -> list[str]:
    out = []
    for name in sorted(FLOWS):
        try:
            flow_class(name).check_available()
        except (ImportError, AttributeError, NotInstalledError):
            continue
        out.append(name)
    return out


AVAILABLE = _available()


def test_pytorch_is_available() -> None:
    assert "pytorch" in AVAILABLE


@pytest.mark.parametrize("name", AVAILABLE)
class TestFlowContract:
    geometry = ModelGeometry.preset("tiny")

    def test_prefill_and_decode_return_positive_seconds(self, name: str) -> None:
        flow = make_flow(name, FlowConfig(threads=1))
        art = flow.build(self.geometry.scaled_dims(2, 0.5))
        try:
            for phase in ("prefill", "decode"):
                times = [flow.run_once(art, Workload(phase, 16)) for _ in range(3)]  # type: ignore[arg-type]
                assert all(isinstance(t, float) and 0 < t < 10 and math.isfinite(t) for t in times), times
        finally:
            flow.close(art)

    def test_describes_itself(self, name: str) -> None:
        flow = make_flow(name, FlowConfig(threads=1))
        assert isinstance(flow.variant, str) and flow.variant
        env = flow.environment()
        assert env["flow"] == name

    def test_decode_context_is_prompt_len_each_time(self, name: str) -> None:
        """Repeated decode steps at two context lengths both work (the cache is reset between repeats)."""
        flow = make_flow(name, FlowConfig(threads=1))
        art = flow.build(self.geometry.scaled_dims(1, 1.0))
        try:
            for p in (8, 40, 8):
                for _ in range(3):
                    assert flow.run_once(art, Workload("decode", p)) > 0
        finally:
            flow.close(art)


def test_pytorch_decode_cache_stays_at_prompt_len() -> None:
    flow = make_flow("pytorch", FlowConfig(threads=1))
    art = flow.build(ModelGeometry.preset("tiny").scaled_dims(2, 1.0))
    for _ in range(4):
        flow.run_once(art, Workload("decode", 24))
    cache = art.caches[(24, 1)]
    assert cache.get_seq_length() == 25  # 24 cached + the one timed token, cropped before the next step
    flow.run_once(art, Workload("decode", 24))
    assert cache.get_seq_length() == 25


def test_pytorch_depth_views_share_weights_and_run() -> None:
    flow = make_flow("pytorch", FlowConfig(threads=1))
    g = ModelGeometry.preset("tiny")
    deep = flow.build(g.scaled_dims(4, 0.5))
    shallow = flow.build(g.scaled_dims(2, 0.5))
    assert len(shallow.model.model.layers) == 2 and len(deep.model.model.layers) == 4
    p_deep = deep.model.model.layers[0].mlp.up_proj.weight
    assert shallow.model.model.layers[0].mlp.up_proj.weight.data_ptr() == p_deep.data_ptr()
    assert flow.run_once(shallow, Workload("decode", 8)) > 0
    assert len(shallow.caches[(8, 1)].layers) == 2
    other = flow.build(g.scaled_dims(2, 1.0))  # another width: built anew
    assert other.model.model.layers[0].mlp.up_proj.weight.shape[0] == g.intermediate


def test_pytorch_rejects_bad_config() -> None:
    import torch

    with pytest.raises(AmoebaError, match="dtype"):
        make_flow("pytorch", FlowConfig(dtype="float16"))
    if not torch.cuda.is_available():
        with pytest.raises(NotInstalledError, match="CUDA is not available"):
            make_flow("pytorch", FlowConfig(device="cuda", dtype="float16"))


def test_pytorch_bfloat16_runs_and_is_its_own_variant() -> None:
    flow = make_flow("pytorch", FlowConfig(dtype="bfloat16", threads=1))
    art = flow.build(ModelGeometry.preset("tiny").scaled_dims(2, 1.0))
    assert (
        next(art.model.parameters()).dtype.is_floating_point
        and str(next(art.model.parameters()).dtype) == "torch.bfloat16"
    )
    assert flow.run_once(art, Workload("prefill", 8)) > 0 and flow.run_once(art, Workload("decode", 8)) > 0
    assert flow.variant == "bfloat16"


def test_pytorch_builds_narrowed_mha_shapes() -> None:
    """MHA at width 0.75 keeps 3 of 4 heads: 3 x 16 != hidden 64 (LLaMA2-7B's case at 24 x 128 != 4096)."""
    g = ModelGeometry(n_layers=2, hidden=64, n_heads=4, n_kv_heads=4, intermediate=128, vocab=64, name="mha")
    flow = make_flow("pytorch", FlowConfig(threads=1))
    art = flow.build(g.scaled_dims(2, 0.75))
    assert art.model.model.layers[0].self_attn.q_proj.weight.shape == (48, 64)
    assert flow.run_once(art, Workload("decode", 8)) > 0


def test_flow_specs_of_the_benchmark_scripts() -> None:
    from profiler.flows import parse_flow_spec, split_flow_specs

    assert parse_flow_spec("llamacpp:quant=q8_0") == ("llamacpp", {"quant": "q8_0"})
    assert parse_flow_spec(" tvm:trials=32, device_name=x ") == ("tvm", {"trials": "32", "device_name": "x"})
    assert parse_flow_spec("pytorch") == ("pytorch", {})
    with pytest.raises(AmoebaError, match="known:"):
        parse_flow_spec("tensorrt:x=1")
    with pytest.raises(AmoebaError, match="key=value"):
        parse_flow_spec("llamacpp:q8_0")
    assert split_flow_specs("pytorch, llamacpp") == ["pytorch", "llamacpp"]
    assert split_flow_specs("pytorch;llamacpp:quant=q8_0,seed=1;") == ["pytorch", "llamacpp:quant=q8_0,seed=1"]
