"""TVM flow on the tiny geometry: compiled graphs equal PyTorch, timing runs, tuning ledger is honoured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.flows import FlowConfig, Workload, make_flow

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

GEOM = ModelGeometry.preset("tiny").scaled_dims(1, 1.0)


def _torch_outputs(art, phase: str, p: int) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    from profiler.flows._kv_llama import Decode, Prefill, example_inputs

    mod = Prefill(art.core) if phase == "prefill" else Decode(art.core, p)
    with torch.no_grad():
        return mod(*example_inputs(art.core, phase, p))


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_untuned_graphs_equal_pytorch_and_time(phase: str) -> None:
    flow = make_flow("tvm", FlowConfig(threads=2))
    assert flow.variant == "untuned"
    art = flow.build(GEOM)
    g = flow.compile(art, phase, 8)
    got = g.vm["main"](*g.args)
    ref = _torch_outputs(art, phase, 8)
    assert len(got) == len(ref) == 1 + 2 * GEOM.n_layers
    for a, b in zip(got, ref):
        assert a.numpy().shape == tuple(b.shape)
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, rtol=1e-4)
    secs = [flow.run_once(art, Workload(phase, 8)) for _ in range(3)]
    assert all(0 < s < 5 for s in secs)
    assert flow.compile(art, phase, 8) is g  # cached per (phase, prompt_len)
    flow.close(art)
    assert flow.environment()["target"] == {"kind": "llvm", "num-cores": 2}


def test_already_tuned_graph_is_not_tuned_again(tmp_path: Path) -> None:
    """A ledger entry for this graph and budget means: apply the database, run no trials."""
    import tvm_ffi
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from profiler.flows._kv_llama import Decode, example_inputs

    flow = make_flow("tvm", FlowConfig(threads=2, options={"trials": 8, "trials_per_task": 2, "tuning_dir": str(tmp_path)}))
    assert flow.variant == "tuned-8"
    art = flow.build(GEOM)
    ep = torch.export.export(Decode(art.core, 4).eval(), example_inputs(art.core, "decode", 4))
    mod, _ = relax.frontend.detach_params(from_exported_program(ep, keep_params_as_input=True))
    sig = f"{tvm_ffi.structural_hash(mod)}:8:2"
    (tmp_path / "tuned.json").write_text(json.dumps({sig: {"trials": 8}}))
    g = flow.compile(art, "decode", 4)  # would take minutes if it tuned
    got = g.vm["main"](*g.args)[0].numpy()
    np.testing.assert_allclose(got, _torch_outputs(art, "decode", 4)[0].numpy(), atol=1e-4, rtol=1e-4)
    assert list(json.loads((tmp_path / "tuned.json").read_text())) == [sig]


def test_tuning_dir_is_per_device_and_width_not_depth() -> None:
    from profiler.flows.tvm import tuning_dir

    base = ModelGeometry.preset("smollm2-135m")
    a = tuning_dir(base.scaled_dims(30, 0.75), "cpu-host", "/p")
    assert a == tuning_dir(base.scaled_dims(3, 0.75), "cpu-host", "/p")
    assert a != tuning_dir(base.scaled_dims(30, 1.0), "cpu-host", "/p")
    assert a.parts[:4] == ("/", "p", "cpu-host", "tvm_tuning")


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(AmoebaError, match="float32"):
        make_flow("tvm", FlowConfig(dtype="bfloat16"))
    with pytest.raises(AmoebaError, match="trials"):
        make_flow("tvm", FlowConfig(options={"trials": -1}))


def test_known_bad_ffi_combination_is_refused() -> None:
    from profiler.flows.tvm import ffi_is_broken

    assert ffi_is_broken("0.27.0.post1", "0.1.15.post2")
    assert not ffi_is_broken("0.27.0.post1", "0.1.14.post1")
    assert not ffi_is_broken("0.28.0", "0.1.15")
