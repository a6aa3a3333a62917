"""Deployment flows, imported lazily by name so a missing runtime never breaks the others."""

from __future__ import annotations

import importlib

from amoeba_core.errors import AmoebaError
from profiler.flows.base import PHASES, Flow, FlowConfig, Phase, Workload
from profiler.flows.options import FLOW_OPTIONS, FlowOptions, parse_options

# name -> "module:Class". Add a flow here and in its own module; nothing else names it.
FLOWS: dict[str, str] = {
    "pytorch": "profiler.flows.pytorch:PyTorchFlow",
    "llamacpp": "profiler.flows.llamacpp:LlamaCppFlow",
    "onnxruntime": "profiler.flows.onnxruntime:OnnxRuntimeFlow",
    "tvm": "profiler.flows.tvm:TvmFlow",
    "mlc_llm": "profiler.flows.mlc_llm:MlcLlmFlow",
    "tensorrt_llm": "profiler.flows.tensorrt_llm:TensorRtLlmFlow",
}


def flow_class(name: str) -> type[Flow]:
    if name not in FLOWS:
        raise AmoebaError(f"unknown flow {name!r}; known: {', '.join(sorted(FLOWS))}")
    mod, cls = FLOWS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def make_flow(name: str, config: FlowConfig | None = None) -> Flow:
    """The flow ``name``; raises NotInstalledError when its runtime is missing."""
    klass = flow_class(name)
    klass.check_available()
    return klass(config)


__all__ = ["FLOWS", "FLOW_OPTIONS", "PHASES", "Flow", "FlowConfig", "FlowOptions", "Phase", "Workload", "flow_class",
           "make_flow", "parse_flow_spec", "parse_options", "split_flow_specs"]


def parse_flow_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"llamacpp:quant=q8_0,seed=1"`` -> ``("llamacpp", {"quant": "q8_0", "seed": "1"})`` (benchmark scripts).

    The options are checked against the flow's typed options (:mod:`profiler.flows.options`): an
    unknown key or a bad value raises AmoebaError here, before a benchmark times anything."""
    name, _, rest = spec.strip().partition(":")
    opts: dict[str, str] = {}
    for kv in filter(None, (x.strip() for x in rest.split(","))):
        if "=" not in kv:
            raise AmoebaError(f"flow options are key=value, got {kv!r} in {spec!r}")
        k, v = kv.split("=", 1)
        opts[k.strip()] = v.strip()
    flow_class(name.strip())  # unknown flow -> error listing the known ones
    parse_options(name.strip(), opts)  # unknown key / bad value -> error listing the valid ones
    return name.strip(), opts


def split_flow_specs(text: str) -> list[str]:
    """``;``-separated flow specs; ``,`` separates too when no spec carries options ("pytorch,llamacpp")."""
    sep = ";" if ";" in text or ":" in text else ","
    return [spec.strip() for spec in text.split(sep) if spec.strip()]
