"""TVM flow on the tiny geometry: compiled graphs equal PyTorch, timing runs, tuned kernels are reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.flows import FlowConfig, Workload, make_flow
from tests._parity import FP32_REL_RMS, assert_logits_match, rel_rms

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
    for a, b in zip(got, ref):  # logits, then every layer's K and V (fp32 both sides: tests/_parity.py)
        assert a.numpy().shape == tuple(b.shape)
        assert rel_rms(a.numpy(), b.numpy()) <= FP32_REL_RMS
    assert_logits_match(got[0].numpy(), ref[0].numpy(), FP32_REL_RMS, "fp32 TVM vs fp32 PyTorch")
    secs = [flow.run_once(art, Workload(phase, 8)) for _ in range(3)]
    assert all(0 < s < 5 for s in secs)
    assert flow.compile(art, phase, 8) is g  # cached per (phase, prompt_len)
    flow.close(art)
    assert flow.environment()["target"] == {"kind": "llvm", "num-cores": 2}


def test_rebuild_reloads_the_executable_with_the_new_artifacts_weights() -> None:
    """A rebuild between rounds (``--rebuild``) loads the compiled executable into a new VM with the
    new artifact's weights; it does not compile again."""
    flow = make_flow("tvm", FlowConfig(threads=2))
    first = flow.build(GEOM)
    g1 = flow.compile(first, "decode", 4)
    flow.close(first)
    assert first.graphs == {}
    (compiled,) = flow._compiled.values()
    again = flow.build(GEOM)
    with torch.no_grad():  # weights that differ from the first artifact's: outputs must follow them
        for p in again.core.parameters():
            p.mul_(1.5)
    g2 = flow.compile(again, "decode", 4)
    assert g2 is not g1 and g2.vm is not g1.vm
    assert list(flow._compiled.values()) == [compiled]  # reused, not compiled again
    got = g2.vm["main"](*g2.args)[0].numpy()
    assert_logits_match(got, _torch_outputs(again, "decode", 4)[0].numpy(), FP32_REL_RMS,
                        "reloaded TVM vs PyTorch with the new weights")
    flow.close(again)


def test_tuned_kernels_are_reused_across_depths(tmp_path: Path) -> None:
    """Tune depth 1 with 1 trial per kernel; depth 2 then finds every kernel in the database."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from profiler.flows.tvm import kernels_to_tune, target_dict

    opts = {"trials": 1, "tuning_dir": str(tmp_path)}
    flow = make_flow("tvm", FlowConfig(threads=2, options=opts))
    assert flow.variant == "tuned-1"
    art = flow.build(GEOM)
    g = flow.compile(art, "decode", 4)
    got = g.vm["main"](*g.args)[0].numpy()
    assert_logits_match(got, _torch_outputs(art, "decode", 4)[0].numpy(), FP32_REL_RMS, "fp32 tuned TVM vs PyTorch")
    db = ms.database.JSONDatabase(work_dir=str(tmp_path))
    assert len(db.get_all_tuning_records()) >= 4  # the projections, LM head, attention, norms

    target = tvm.target.Target(target_dict(2))
    # a kernel whose single candidate failed to build or run in time (a loaded host) has its workload
    # but no valid record, and is tuned again later: compare depth 2 against depth 1's own outcome
    todo1, done1 = kernels_to_tune(_relax_decode(art, 4), target, db)
    assert done1 >= 3 and len(todo1) <= 1
    deeper = make_flow("tvm", FlowConfig(threads=2, options=opts)).build(
        ModelGeometry.preset("tiny").scaled_dims(2, 1.0))
    todo, done = kernels_to_tune(_relax_decode(deeper, 4), target, db)
    assert done == done1 and len(todo) == len(todo1)  # depth 2's kernels are structurally depth 1's


def _relax_decode(art, p: int, fuse: bool = True):  # noqa: ANN001, ANN202
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from profiler.flows._kv_llama import Decode, example_inputs

    ep = torch.export.export(Decode(art.core, p).eval(), example_inputs(art.core, "decode", p))
    mod, _ = relax.frontend.detach_params(from_exported_program(ep, keep_params_as_input=True))
    return relax.transform.FuseTransposeMatmul()(mod) if fuse else mod


def test_no_weight_transpose_left_in_the_compiled_graph() -> None:
    """Every ``x @ W.T`` is one NT_matmul kernel: no per-call transpose of a weight."""
    art = make_flow("tvm", FlowConfig(threads=2)).build(GEOM)
    mod = _relax_decode(art, 4)
    script = mod["main"].script()
    assert "NT_matmul" in {gv.name_hint for gv in mod.functions}  # x @ W.T as one kernel
    assert "_weight, axes=" not in script  # the importer's transpose of a weight parameter
    unfused = _relax_decode(art, 4, fuse=False)["main"].script()
    assert "_weight, axes=" in unfused  # (what the check would see without the pass)


def test_tuning_dir_is_per_device_and_budget() -> None:
    from profiler.flows.tvm import tuning_dir

    assert tuning_dir(16, "cpu-host", "/p") == Path("/p/cpu-host/tvm_tuning/t16")
    assert tuning_dir(16, "cpu-host", "/p") != tuning_dir(32, "cpu-host", "/p")


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(AmoebaError, match="float32"):
        make_flow("tvm", FlowConfig(dtype="bfloat16"))
    with pytest.raises(AmoebaError, match="trials"):
        make_flow("tvm", FlowConfig(options={"trials": -1}))
    with pytest.raises(AmoebaError, match="per kernel"):
        make_flow("tvm", FlowConfig(options={"trials": 8, "trials_per_task": 2}))


def test_known_bad_ffi_combination_is_refused() -> None:
    from profiler.flows.tvm import ffi_is_broken

    assert ffi_is_broken("0.27.0.post1", "0.1.15.post2")
    assert not ffi_is_broken("0.27.0.post1", "0.1.14.post1")
    assert not ffi_is_broken("0.28.0", "0.1.15")
