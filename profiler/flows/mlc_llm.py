"""MLC-LLM flow (GPU: CUDA, also Vulkan/Metal/ROCm builds): compile the shape, time it with MLCEngine.

Written against MLC-LLM's documented CLI and Python API (nightly wheels from https://mlc.ai/wheels;
the PyPI ``mlc-llm-*`` names are placeholders, and CPU inference is not supported upstream):

1. an HF checkpoint of the shape (random weights + a WordLevel ``tokenizer.json``, see
   ``_hf_checkpoint``),
2. ``python -m mlc_llm convert_weight`` / ``gen_config`` (``--conv-template LM``, batch 1,
   context window ``max(prompt_len + decode_tokens, ...)``) / ``compile`` into a model library,
3. ``MLCEngine(mode="interactive", engine_config=EngineConfig(prefix_cache_mode="disable"))``;
   one streamed completion per timed call with ``debug_config.ignore_eos`` so the output
   length is fixed, fresh random prompt ids every call.

prefill = ``usage.extra["ttft_s"]`` of a request with ``max_tokens=1``; decode =
``1 / usage.extra["decode_tokens_per_s"]`` of a request with ``max_tokens=N`` (option
``decode_tokens``, default 16; the context grows from ``prompt_len`` to ``prompt_len + N - 1``).

The command lines and configs are pure functions with unit tests. Nothing here has been
measured on this project's machines (no GPU, MLC wheels not installable): no number without a run.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from amoeba_core.cache import cache_root
from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.shape import ModelGeometry
from profiler.flows._hf_checkpoint import checkpoint_name, write_hf_checkpoint
from profiler.flows.base import Flow, FlowConfig, Workload
from profiler.flows.options import MlcLlmOptions, MlcQuantization

log = logging.getLogger(__name__)

INSTALL = ("pip install --pre -f https://mlc.ai/wheels mlc-llm-nightly-cu128 mlc-ai-nightly-cu128  "
           "(pick the wheel for your CUDA, e.g. -cu130; on Jetson Orin build MLC-LLM from source)")
QUANTIZATIONS: tuple[str, ...] = typing.get_args(MlcQuantization)
_HF_DTYPE = {"q0f32": "float32", "q4f32_1": "float32", "q0bf16": "bfloat16"}


# -- pure helpers (unit-tested without MLC) ------------------------------------------------------
def _check_quant(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise AmoebaError(f"mlc_llm quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")


def hf_dtype(quantization: str) -> str:
    """Dtype of the HF checkpoint MLC converts from (float16 unless the quantization is f32/bf16)."""
    return _HF_DTYPE.get(quantization, "float16")


def convert_weight_command(hf_dir: str | Path, out_dir: str | Path, quantization: str = "q0f16",
                           device: str = "cuda") -> list[str]:
    _check_quant(quantization)
    return [sys.executable, "-m", "mlc_llm", "convert_weight", str(hf_dir), "--quantization", quantization,
            "--model-type", "llama", "--device", device, "-o", str(out_dir)]


def gen_config_command(hf_dir: str | Path, out_dir: str | Path, quantization: str = "q0f16",
                       context_window: int = 4096, prefill_chunk: int | None = None) -> list[str]:
    """``gen_config`` for a plain base model (``--conv-template LM``) served at batch 1."""
    _check_quant(quantization)
    if context_window < 2:
        raise AmoebaError(f"context_window must be >= 2, got {context_window}")
    return [sys.executable, "-m", "mlc_llm", "gen_config", str(hf_dir), "--quantization", quantization,
            "--model-type", "llama", "--conv-template", "LM", "--context-window-size", str(context_window),
            "--prefill-chunk-size", str(prefill_chunk or context_window), "--max-batch-size", "1", "-o", str(out_dir)]


def compile_command(out_dir: str | Path, lib_path: str | Path, device: str = "cuda") -> list[str]:
    return [sys.executable, "-m", "mlc_llm", "compile", str(Path(out_dir) / "mlc-chat-config.json"),
            "--device", device, "-o", str(lib_path)]


def pipeline_commands(hf_dir: str | Path, out_dir: str | Path, lib_path: str | Path, quantization: str,
                      device: str, context_window: int) -> list[list[str]]:
    """The three commands that turn an HF folder into MLC weights + config + model library."""
    return [convert_weight_command(hf_dir, out_dir, quantization, device),
            gen_config_command(hf_dir, out_dir, quantization, context_window),
            compile_command(out_dir, lib_path, device)]


def engine_kwargs(out_dir: str | Path, lib_path: str | Path, device: str = "cuda") -> dict[str, Any]:
    """``MLCEngine`` arguments (the EngineConfig is built from ``engine_config_kwargs``)."""
    return {"model": str(out_dir), "device": device, "model_lib": str(lib_path), "mode": "interactive"}


def engine_config_kwargs() -> dict[str, Any]:
    """``EngineConfig``: no prefix cache, so TTFT is never a cache hit."""
    return {"prefix_cache_mode": "disable"}


def request_kwargs(prompt: list[int], max_tokens: int) -> dict[str, Any]:
    """``engine.completions.create`` arguments for a fixed-length streamed completion."""
    if max_tokens < 1:
        raise AmoebaError(f"max_tokens must be >= 1, got {max_tokens}")
    return {"prompt": list(prompt), "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "extra_body": {"debug_config": {"ignore_eos": True}}}


def seconds_from_usage(extra: dict[str, Any], phase: str) -> float:
    """prefill: ``ttft_s``; decode: ``1 / decode_tokens_per_s``."""
    try:
        if phase == "prefill":
            return float(extra["ttft_s"])
        rate = float(extra["decode_tokens_per_s"])
    except (KeyError, TypeError) as e:
        raise AmoebaError(f"MLC usage.extra lacks {e} (got keys {sorted(extra)})") from None
    if rate <= 0:
        raise AmoebaError(f"MLC reported decode_tokens_per_s={rate}")
    return 1.0 / rate


def random_prompt(prompt_len: int, vocab: int, seed: int) -> list[int]:
    lo = 3 if vocab > 3 else 0  # skip the checkpoint tokenizer's special ids
    return np.random.default_rng(seed).integers(lo, vocab, prompt_len).tolist()


# -- the flow -----------------------------------------------------------------------------------
@dataclass
class MlcArtifact:
    geometry: ModelGeometry
    out_dir: Path
    lib_path: Path
    engine: Any = None
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class MlcLlmFlow(Flow):
    """Options: quantization (q0f16), mlc_device (cuda), decode_tokens (16), context_window (2048), workdir."""

    name: ClassVar[str] = "mlc_llm"
    install_hint: ClassVar[str] = INSTALL
    options_model: ClassVar[type[MlcLlmOptions]] = MlcLlmOptions

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__(config or FlowConfig(dtype="float16", device="cuda"))
        o = self.options  # validated: quantization one of QUANTIZATIONS, decode_tokens >= 2
        self.quantization = o.quantization
        self.mlc_device = o.mlc_device
        self.decode_tokens = o.decode_tokens
        self.context_window = o.context_window
        if self.config.device != "cuda":
            raise AmoebaError("mlc_llm runs on a GPU: pass --flow-device cuda")
        self.workdir = Path(o.workdir or cache_root() / "mlc")  # counted in the cache budget

    @classmethod
    def check_available(cls) -> None:
        try:
            import mlc_llm  # noqa: F401
        except ImportError as e:
            raise NotInstalledError(f"mlc_llm flow: MLC-LLM is not installed ({e}); install with: {INSTALL}") from None

    def build(self, geometry: ModelGeometry) -> MlcArtifact:
        if self.context_window > geometry.max_position:
            raise AmoebaError(f"context_window {self.context_window} exceeds the model's {geometry.max_position} positions")
        hf = write_hf_checkpoint(geometry, self.workdir / checkpoint_name(geometry, hf_dtype(self.quantization)),
                                 hf_dtype(self.quantization))
        out = self.workdir / f"{hf.name}-{self.quantization}-c{self.context_window}-MLC"
        lib = out / f"lib-{self.mlc_device}.so"
        if not lib.is_file():
            for cmd in pipeline_commands(hf, out, lib, self.quantization, self.mlc_device, self.context_window):
                log.info("running %s", " ".join(cmd))
                subprocess.run(cmd, check=True)
        return MlcArtifact(geometry, out, lib)

    def _engine(self, art: MlcArtifact) -> Any:
        if art.engine is None:
            from mlc_llm import MLCEngine
            from mlc_llm.serve import EngineConfig

            art.engine = MLCEngine(**engine_kwargs(art.out_dir, art.lib_path, self.mlc_device),
                                   engine_config=EngineConfig(**engine_config_kwargs()))
        return art.engine

    def run_once(self, artifact: MlcArtifact, workload: Workload) -> float:
        if workload.batch != 1:
            raise AmoebaError("mlc_llm flow times batch 1 only")
        if workload.prompt_len + self.decode_tokens > self.context_window:
            raise AmoebaError(f"prompt_len + decode_tokens exceeds context_window {self.context_window} "
                              f"(set --option context_window=...)")
        eng = self._engine(artifact)
        artifact.calls += 1
        prompt = random_prompt(workload.prompt_len, artifact.geometry.vocab, artifact.calls)
        n = 1 if workload.phase == "prefill" else self.decode_tokens
        usage = None
        for chunk in eng.completions.create(**request_kwargs(prompt, n)):
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
        if usage is None or usage.extra is None:
            raise AmoebaError("MLC returned no usage statistics")
        return seconds_from_usage(dict(usage.extra), workload.phase)

    def close(self, artifact: MlcArtifact) -> None:
        if artifact.engine is not None:
            artifact.engine.terminate()
            artifact.engine = None

    def environment(self) -> dict[str, Any]:
        env = super().environment()
        try:
            import mlc_llm

            env["mlc_llm"] = getattr(mlc_llm, "__version__", "unknown")
        except ImportError:
            pass
        env.update({"quantization": self.quantization, "mlc_device": self.mlc_device,
                    "decode_tokens": self.decode_tokens, "context_window": self.context_window})
        return env

    @property
    def variant(self) -> str:
        return self.quantization
