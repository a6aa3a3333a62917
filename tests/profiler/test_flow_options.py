"""Typed flow options: a typo or a bad value is refused in one line (exit 2) before anything is
written, without the flow's runtime; a correct option reaches the flow's resolved config."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from amoeba_core.errors import AmoebaError
from profiler.flows import FLOWS, FlowConfig, flow_class, parse_flow_spec
from profiler.flows.options import FLOW_OPTIONS, LlamaCppOptions, TvmOptions, allowed_values, parse_options

PROFILE = ["profile", "--device", "cpu-host", "--flow", "llamacpp", "--model", "tiny", "--depths", "1",
           "--widths", "1", "--threads", "1"]


def _files(*roots: Path) -> list[Path]:
    return sorted(p for r in roots if r.exists() for p in r.rglob("*"))


def _profile(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[Path]]:
    """`amoeba profile` in a subprocess against an empty profiles root and an empty cache."""
    root, cache = tmp_path / "profiles", tmp_path / "cache"
    root.mkdir()
    cache.mkdir()
    env = {**os.environ, "AMOEBA_PROFILES": str(root), "AMOEBA_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "amoeba", *PROFILE, *extra], env=env, capture_output=True, text=True,
                       timeout=120)
    return r, _files(root, cache)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_typo_in_option_key_refused_nothing_written(tmp_path: Path) -> None:
    r, written = _profile(tmp_path, "-o", "qaunt=q4_0")
    line = _one_error_line(r)
    assert "'qaunt'" in line and "quant" in line.replace("'qaunt'", "") and "valid options" in line, line
    assert written == []  # no table, no device.yaml, no cached GGUF


def test_bad_option_value_lists_allowed_values(tmp_path: Path) -> None:
    r, written = _profile(tmp_path, "-o", "quant=q9")
    line = _one_error_line(r)
    assert "q9" in line and "allowed values: f16, q8_0, q4_0" in line, line
    assert written == []


def test_refused_without_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from profiler.plan import make_plan

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(AmoebaError, match="unknown option 'qaunt'; valid options: quant"):
        make_plan("cpu-host", "llamacpp", "tiny", (1,), (1.0,), ("decode",), 8, "float32", 1,
                  options={"qaunt": "q4_0"})


def test_correct_option_reaches_resolved_config() -> None:
    from profiler.cli import _options
    from profiler.flows.llamacpp import LlamaCppFlow
    from profiler.plan import make_plan

    plan = make_plan("cpu-host", "llamacpp", "tiny", (1,), (1.0,), ("decode",), 8, "float32", 1,
                     options=_options(["quant=q8_0", "seed=3"]))
    assert plan.config.options == LlamaCppOptions(quant="q8_0", seed=3)
    flow = LlamaCppFlow(plan.config)  # the flow's resolved config holds the typed options
    assert flow.options.quant == flow.quant == "q8_0" and flow.options.seed == 3
    assert flow.config.options is plan.config.options
    # a raw dict (benchmark specs give strings) is resolved by the flow itself
    name, opts = parse_flow_spec("tvm:trials=32,device_name=box")
    tvm = flow_class(name).options_model
    assert parse_options(name, opts) == tvm(trials=32, device_name="box")
    assert flow_class("pytorch")(FlowConfig(options={"reuse_weights": "false"})).options.reuse_weights is False


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_option_model_round_trips_defaults(name: str) -> None:
    model = FLOW_OPTIONS[name]
    assert flow_class(name).options_model is model
    default = model()
    assert model.model_validate_json(default.model_dump_json()) == default
    assert parse_options(name, default.model_dump()) == default
    assert parse_options(name, None) == default
    for key, f in model.model_fields.items():
        allowed = allowed_values(model, key)
        assert not allowed or f.default in allowed, (key, f.default, allowed)


@pytest.mark.parametrize(("spec", "msg"), [
    ("tvm:trails=32", "unknown option 'trails'; valid options: trials"),
    ("tvm:trials=-1", "trials='-1' is not valid"),
    ("tvm:trials=many", "expected int"),
    ("tvm:trials_per_task=2", "trials is now the budget per kernel"),
    ("onnxruntime:exporter=optimum", "allowed values: torchscript, dynamo"),
    ("mlc_llm:decode_tokens=1", "decode_tokens='1' is not valid"),
    ("tensorrt_llm:backend=trt", "allowed values: pytorch, tensorrt"),
    ("pytorch:reuse_weights=perhaps", "expected bool"),
])
def test_bad_specs_one_line(spec: str, msg: str) -> None:
    with pytest.raises(AmoebaError, match=msg) as e:
        parse_flow_spec(spec)
    assert "\n" not in str(e.value)


def test_allowed_values_agree_with_the_flows() -> None:
    from profiler.flows._gguf import QUANTS
    from profiler.flows.mlc_llm import QUANTIZATIONS
    from profiler.flows.onnxruntime import EXPORTERS
    from profiler.flows.tensorrt_llm import BACKENDS

    assert allowed_values(LlamaCppOptions, "quant") == QUANTS
    assert allowed_values(FLOW_OPTIONS["onnxruntime"], "exporter") == EXPORTERS
    assert allowed_values(FLOW_OPTIONS["mlc_llm"], "quantization") == QUANTIZATIONS
    assert allowed_values(FLOW_OPTIONS["tensorrt_llm"], "backend") == BACKENDS
    assert typing.get_origin(TvmOptions.model_fields["trials"].annotation) is None  # a plain int with a range
