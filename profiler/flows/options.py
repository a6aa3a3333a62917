"""Typed options of every flow (``amoeba profile -o KEY=VALUE``, ``"flow:key=value"`` specs).

Each flow declares its options here as a pydantic model: types, defaults and allowed values
(``Literal`` enumerations, integer ranges, booleans). The models are pure: they validate values
and import no runtime, so a typo is refused before anything is written, on a machine without the
flow's runtime too. :func:`parse_options` turns a raw ``{key: value}`` dict (strings from a spec,
YAML scalars from the CLI) into the flow's model, or raises a one-line :class:`AmoebaError`
naming the valid keys (unknown key) or the allowed values (bad value).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amoeba_core.errors import AmoebaError

GgufQuant = Literal["f16", "q8_0", "q4_0"]
OnnxExporter = Literal["torchscript", "dynamo"]
MlcQuantization = Literal["q0f16", "q0bf16", "q0f32", "q3f16_1", "q4f16_0", "q4f16_1", "q4f16_2", "q4f32_1",
                          "e4m3_e4m3_f16"]
TrtBackend = Literal["pytorch", "tensorrt"]


class FlowOptions(BaseModel):
    """Base of every flow's options: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # keys that existed once: refused with this hint instead of "unknown option"
    removed: ClassVar[dict[str, str]] = {}


class PyTorchOptions(FlowOptions):
    reuse_weights: bool = Field(True, description="build one full-depth model per width and slice its layers")


class LlamaCppOptions(FlowOptions):
    quant: GgufQuant = Field("f16", description="weight type of the random-weight GGUF")
    gguf: Path | None = Field(None, description="load this GGUF file instead (must match the geometry)")
    seed: int = Field(0, ge=0, description="seed of the random weights")
    cache_dir: Path | None = Field(None, description="where generated GGUF files are cached")


class OnnxRuntimeOptions(FlowOptions):
    exporter: OnnxExporter = Field("torchscript", description="torch.onnx exporter")
    seed: int = Field(0, ge=0, description="seed of the random weights")
    cache_dir: Path | None = Field(None, description="where exported graphs are cached")


class TvmOptions(FlowOptions):
    removed: ClassVar[dict[str, str]] = {"trials_per_task": "trials_per_task is gone; trials is now the budget per kernel"}
    trials: int = Field(0, ge=0, description="MetaSchedule trials per kernel (0: untuned)")
    device_name: str = Field("cpu-host", min_length=1, description="device whose tuning database is used")
    tuning_dir: Path | None = Field(None, description="tuning database folder (overrides device_name)")
    profiles_root: Path | None = Field(None, description="profiles folder holding the tuning databases")


class MlcLlmOptions(FlowOptions):
    quantization: MlcQuantization = Field("q0f16", description="MLC quantization")
    mlc_device: str = Field("cuda", min_length=1, description="MLC --device (e.g. vulkan)")
    decode_tokens: int = Field(16, ge=2, description="tokens generated to measure time per output token")
    context_window: int = Field(2048, ge=1, description="compiled context window")
    workdir: Path | None = Field(None, description="checkpoints and compiled libraries (default: the cache)")


class TensorRtLlmOptions(FlowOptions):
    backend: TrtBackend = Field("pytorch", description="pytorch (LLM API, no engine) or tensorrt (engine build)")
    decode_tokens: int = Field(16, ge=2, description="tokens generated to measure time per output token")
    free_gpu_memory_fraction: float = Field(0.3, gt=0, le=1, description="KV-cache share of free GPU memory")
    cuda_graphs: bool = Field(True, description="CUDA graphs for decode (PyTorch backend)")
    workdir: Path | None = Field(None, description="checkpoints and engines (default: the cache)")


# flow name -> its options model (the flow classes point at the same models)
FLOW_OPTIONS: dict[str, type[FlowOptions]] = {
    "pytorch": PyTorchOptions,
    "llamacpp": LlamaCppOptions,
    "onnxruntime": OnnxRuntimeOptions,
    "tvm": TvmOptions,
    "mlc_llm": MlcLlmOptions,
    "tensorrt_llm": TensorRtLlmOptions,
}


def allowed_values(model: type[FlowOptions], key: str) -> tuple[Any, ...]:
    """The values a ``Literal`` option accepts (``()`` for other types)."""
    ann = model.model_fields[key].annotation
    return typing.get_args(ann) if typing.get_origin(ann) is Literal else ()


def describe(model: type[FlowOptions]) -> str:
    """``key=default`` of every option, for error messages and help."""
    return ", ".join(f"{k}={f.default}" for k, f in model.model_fields.items())


def parse_options(flow: str, raw: Mapping[str, Any] | FlowOptions | None,
                  model: type[FlowOptions] | None = None) -> FlowOptions:
    """``raw`` validated into ``flow``'s options model (``model`` when given, else ``FLOW_OPTIONS[flow]``)."""
    if model is None:
        if flow not in FLOW_OPTIONS:
            raise AmoebaError(f"unknown flow {flow!r}; known: {', '.join(sorted(FLOW_OPTIONS))}")
        model = FLOW_OPTIONS[flow]
    if isinstance(raw, model):
        return raw
    if isinstance(raw, FlowOptions):
        raise AmoebaError(f"{flow} flow: got {type(raw).__name__}, expected {model.__name__}")
    raw = dict(raw or {})
    keys = ", ".join(model.model_fields) or "(none)"
    for k in raw:
        if k in model.removed:
            raise AmoebaError(f"{flow} flow: {model.removed[k]}")
        if k not in model.model_fields:
            raise AmoebaError(f"{flow} flow: unknown option {k!r}; valid options: {keys}")
    try:
        return model(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        allowed = allowed_values(model, key) if key in model.model_fields else ()
        if allowed:
            hint = f"allowed values: {', '.join(map(str, allowed))}"
        else:
            ann = model.model_fields[key].annotation if key in model.model_fields else None
            msg = str(err["msg"])
            hint = f"{msg[:1].lower()}{msg[1:]} (expected {_type_name(ann)})"
        raise AmoebaError(f"{flow} flow: option {key}={raw.get(key)!r} is not valid: {hint}") from None


def _type_name(ann: Any) -> str:
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is not None and args:
        return " or ".join(getattr(a, "__name__", str(a)) for a in args) + " (optional)"
    return getattr(ann, "__name__", str(ann))


__all__ = ["FLOW_OPTIONS", "FlowOptions", "LlamaCppOptions", "MlcLlmOptions", "OnnxRuntimeOptions",
           "PyTorchOptions", "TensorRtLlmOptions", "TvmOptions", "allowed_values", "describe", "parse_options"]
