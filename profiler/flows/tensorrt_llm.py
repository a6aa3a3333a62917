"""TensorRT-LLM flow (NVIDIA GPUs only): the LLM API on an HF checkpoint of the shape.

Written against TensorRT-LLM 1.x's documented API. ``from tensorrt_llm import LLM`` is the
PyTorch backend (no engine build); ``backend="tensorrt"`` uses the engine-building LLM
(``tensorrt_llm._tensorrt_engine.LLM`` with a ``BuildConfig``, listed as legacy in the docs).

Timing (prefill = time to first token, decode = time per output token):

* prefill: one request of ``prompt_len`` tokens with ``max_tokens=1``; the TTFT from the
  request's perf metrics (``first_token_time - arrival_time``), else the wall-clock stamp of the
  first streamed token.
* decode: one request with ``max_tokens=N`` (option ``decode_tokens``, default 16) and
  ``ignore_eos``; TPOT = ``(last_token_time - first_token_time) / (N - 1)``. The context grows
  from ``prompt_len`` to ``prompt_len + N - 1`` during the request (N small keeps it close).
* Prefix reuse is off (``KvCacheConfig(enable_block_reuse=False)``) and every request gets
  fresh random ids, so TTFT is never a cache hit; the overlap scheduler is off so per-token
  stamps are not blurred.

The pure parts (``llm_kwargs``, ``sampling_kwargs``, ``kv_cache_kwargs``, the
``convert_checkpoint``/``trtllm-build``/``trtllm-bench`` command lines and the trtllm-bench
JSONL dataset) are plain functions with unit tests; they run on any machine. Nothing here has
been measured on this project's machines (no GPU): no number is ever returned without a run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
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
from profiler.flows.options import TensorRtLlmOptions, TrtBackend

log = logging.getLogger(__name__)

INSTALL = ("pip install tensorrt_llm  (Linux x86_64/aarch64 with an NVIDIA GPU; also `apt install libopenmpi-dev`; "
           "or run inside the NGC container nvcr.io/nvidia/tensorrt-llm/release)")
BACKENDS: tuple[str, ...] = typing.get_args(TrtBackend)
DTYPES = ("float16", "bfloat16")


# -- pure helpers (unit-tested without TensorRT-LLM) -----------------------------------------
def kv_cache_kwargs(free_gpu_memory_fraction: float = 0.3) -> dict[str, Any]:
    """``KvCacheConfig`` arguments: no prefix reuse (TTFT must never be a cache hit)."""
    if not 0.0 < free_gpu_memory_fraction <= 1.0:
        raise AmoebaError(f"free_gpu_memory_fraction must be in (0, 1], got {free_gpu_memory_fraction}")
    return {"enable_block_reuse": False, "free_gpu_memory_fraction": free_gpu_memory_fraction}


def sampling_kwargs(max_tokens: int) -> dict[str, Any]:
    """``SamplingParams`` arguments for a fixed output length with random weights and no tokenizer."""
    if max_tokens < 1:
        raise AmoebaError(f"max_tokens must be >= 1, got {max_tokens}")
    return {"max_tokens": max_tokens, "ignore_eos": True, "end_id": -1, "pad_id": -1,
            "detokenize": False, "return_perf_metrics": True}


def llm_kwargs(hf_dir: str | Path, prompt_len: int, decode_tokens: int, dtype: str = "float16",
               backend: str = "pytorch", cuda_graphs: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``LLM(...)`` except the config objects (see ``make_llm``)."""
    if backend not in BACKENDS:
        raise AmoebaError(f"tensorrt_llm backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES:
        raise AmoebaError(f"tensorrt_llm dtype must be one of {DTYPES}, got {dtype!r}")
    kw: dict[str, Any] = {"model": str(hf_dir), "dtype": dtype, "skip_tokenizer_init": True}
    if backend == "pytorch":
        kw.update(max_batch_size=1, max_seq_len=prompt_len + decode_tokens, max_num_tokens=max(prompt_len, 256),
                  disable_overlap_scheduler=True, return_perf_metrics=True)
        if cuda_graphs:
            kw["cuda_graph_config"] = {"batch_sizes": [1]}
    return kw


def build_config_kwargs(prompt_len: int, decode_tokens: int) -> dict[str, int]:
    """``BuildConfig`` attributes of the engine path (batch 1, exact sequence limits)."""
    return {"max_batch_size": 1, "max_input_len": prompt_len, "max_seq_len": prompt_len + decode_tokens,
            "max_num_tokens": max(prompt_len, 256)}


def convert_checkpoint_command(script: str | Path, hf_dir: str | Path, ckpt_dir: str | Path,
                               dtype: str = "float16") -> list[str]:
    """``examples/models/core/llama/convert_checkpoint.py`` from the matching TensorRT-LLM tag."""
    return ["python", str(script), "--model_dir", str(hf_dir), "--output_dir", str(ckpt_dir), "--dtype", dtype]


def trtllm_build_command(ckpt_dir: str | Path, engine_dir: str | Path, prompt_len: int, decode_tokens: int) -> list[str]:
    b = build_config_kwargs(prompt_len, decode_tokens)
    return ["trtllm-build", "--checkpoint_dir", str(ckpt_dir), "--output_dir", str(engine_dir),
            "--gemm_plugin", "auto", "--max_batch_size", str(b["max_batch_size"]),
            "--max_input_len", str(b["max_input_len"]), "--max_seq_len", str(b["max_seq_len"]),
            "--max_num_tokens", str(b["max_num_tokens"])]


def trtllm_bench_command(model_name: str, hf_dir: str | Path, dataset: str | Path, report: str | Path,
                         backend: str = "pytorch", engine_dir: str | Path | None = None,
                         num_requests: int = 20, warmup: int = 2) -> list[str]:
    """``trtllm-bench ... latency`` (batch 1, streaming; the report has TTFT and TPOT)."""
    if backend not in BACKENDS:
        raise AmoebaError(f"trtllm-bench backend must be one of {BACKENDS}, got {backend!r}")
    cmd = ["trtllm-bench", "--model", model_name, "--model_path", str(hf_dir), "latency",
           "--dataset", str(dataset), "--backend", backend, "--num_requests", str(num_requests),
           "--warmup", str(warmup), "--report_json", str(report)]
    if backend == "tensorrt":
        if engine_dir is None:
            raise AmoebaError("trtllm-bench --backend tensorrt needs an engine_dir")
        cmd += ["--engine_dir", str(engine_dir)]
    return cmd


def bench_dataset_lines(prompt_len: int, output_len: int, num_requests: int, vocab: int, seed: int = 0) -> list[str]:
    """trtllm-bench JSONL: one request per line, distinct random prompts (no prefix reuse)."""
    if min(prompt_len, output_len, num_requests) < 1:
        raise AmoebaError("prompt_len, output_len and num_requests must be >= 1")
    rng = np.random.default_rng(seed)
    lo = 3 if vocab > 3 else 0  # skip the special ids of the checkpoint's tokenizer
    return [json.dumps({"task_id": i, "input_ids": rng.integers(lo, vocab, prompt_len).tolist(),
                        "output_tokens": output_len}) for i in range(num_requests)]


def write_bench_dataset(path: str | Path, prompt_len: int, output_len: int, num_requests: int, vocab: int,
                        seed: int = 0) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(bench_dataset_lines(prompt_len, output_len, num_requests, vocab, seed)) + "\n")
    return p


def ttft_tpot(timing: Any, n_tokens: int) -> tuple[float, float | None]:
    """(TTFT, TPOT) in seconds from a request's ``timing_metrics`` (timedelta fields)."""
    ttft = (timing.first_token_time - timing.arrival_time).total_seconds()
    tpot = None
    if n_tokens > 1:
        tpot = (timing.last_token_time - timing.first_token_time).total_seconds() / (n_tokens - 1)
    return ttft, tpot


# -- the flow -----------------------------------------------------------------------------------
@dataclass
class TrtArtifact:
    geometry: ModelGeometry
    hf_dir: Path
    llms: dict[int, Any] = field(default_factory=dict)  # prompt_len -> LLM
    calls: int = 0


class TensorRtLlmFlow(Flow):
    """Options: backend (pytorch|tensorrt), decode_tokens (16), workdir, free_gpu_memory_fraction (0.3),
    cuda_graphs (true)."""

    name: ClassVar[str] = "tensorrt_llm"
    install_hint: ClassVar[str] = INSTALL
    options_model: ClassVar[type[TensorRtLlmOptions]] = TensorRtLlmOptions

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__(config or FlowConfig(dtype="float16", device="cuda"))
        o = self.options  # validated: backend one of BACKENDS, decode_tokens >= 2
        self.backend = o.backend
        self.decode_tokens = o.decode_tokens
        self.dtype = self.config.dtype  # float16 | bfloat16 (pass --dtype float16)
        llm_kwargs("x", 1, self.decode_tokens, self.dtype, self.backend)  # validate early
        if self.config.device != "cuda":
            raise AmoebaError("tensorrt_llm runs on NVIDIA GPUs: pass --flow-device cuda")
        self.workdir = Path(o.workdir or cache_root() / "trtllm")  # counted in the cache budget

    @classmethod
    def check_available(cls) -> None:
        try:
            import tensorrt_llm  # noqa: F401
        except ImportError as e:
            raise NotInstalledError(f"tensorrt_llm flow: TensorRT-LLM is not installed ({e}); install with: {INSTALL}") from None
        import torch

        if not torch.cuda.is_available():
            raise NotInstalledError("tensorrt_llm flow: no CUDA GPU is visible (TensorRT-LLM runs only on NVIDIA GPUs)")

    def build(self, geometry: ModelGeometry) -> TrtArtifact:
        hf = write_hf_checkpoint(geometry, self.workdir / checkpoint_name(geometry, self.dtype), self.dtype)
        return TrtArtifact(geometry, hf)

    def _llm(self, art: TrtArtifact, prompt_len: int) -> Any:
        if prompt_len not in art.llms:
            for other in list(art.llms):  # one engine at a time on the GPU
                art.llms.pop(other).shutdown()
            art.llms[prompt_len] = make_llm(art.hf_dir, prompt_len, self.decode_tokens, self.dtype, self.backend,
                                            self.options.free_gpu_memory_fraction,
                                            self.options.cuda_graphs,
                                            self.workdir / "engines" / f"{art.hf_dir.name}-p{prompt_len}")
        return art.llms[prompt_len]

    def run_once(self, artifact: TrtArtifact, workload: Workload) -> float:
        if workload.batch != 1:
            raise AmoebaError("tensorrt_llm flow times batch 1 only")
        from tensorrt_llm import SamplingParams

        llm = self._llm(artifact, workload.prompt_len)
        artifact.calls += 1
        ids = bench_dataset_lines(workload.prompt_len, 1, 1, artifact.geometry.vocab, seed=artifact.calls)[0]
        prompt = json.loads(ids)["input_ids"]
        n = 1 if workload.phase == "prefill" else self.decode_tokens
        sp = SamplingParams(**sampling_kwargs(n))
        ttft, tpot = asyncio.run(_one_request(llm, prompt, sp, n))
        return ttft if workload.phase == "prefill" else float(tpot)  # type: ignore[arg-type]

    def close(self, artifact: TrtArtifact) -> None:
        for llm in artifact.llms.values():
            llm.shutdown()
        artifact.llms.clear()

    def environment(self) -> dict[str, Any]:
        env = super().environment()
        try:
            import tensorrt_llm
            import torch

            env.update({"tensorrt_llm": tensorrt_llm.__version__, "gpu": torch.cuda.get_device_name(0)})
        except ImportError:
            pass
        env.update({"backend": self.backend, "decode_tokens": self.decode_tokens, "dtype": self.dtype})
        return env

    @property
    def variant(self) -> str:
        return f"{self.backend}-{self.dtype}"


def make_llm(hf_dir: Path, prompt_len: int, decode_tokens: int, dtype: str, backend: str,
             free_fraction: float, cuda_graphs: bool, engine_dir: Path) -> Any:
    """The LLM object for one prompt length (engine built and saved once on the TRT path)."""
    from tensorrt_llm.llmapi import KvCacheConfig

    kw = llm_kwargs(hf_dir, prompt_len, decode_tokens, dtype, backend, cuda_graphs)
    kw["kv_cache_config"] = KvCacheConfig(**kv_cache_kwargs(free_fraction))
    if backend == "pytorch":
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import CudaGraphConfig

        if "cuda_graph_config" in kw:
            kw["cuda_graph_config"] = CudaGraphConfig(**kw["cuda_graph_config"])
        return LLM(**kw)
    from tensorrt_llm import BuildConfig

    try:
        from tensorrt_llm._tensorrt_engine import LLM as TrtLLM  # 1.x: the engine-building LLM
    except ImportError:  # 0.x (e.g. the v0.12.0-jetson branch): LLM itself builds engines
        from tensorrt_llm import LLM as TrtLLM

    if (engine_dir / "config.json").is_file():
        kw["model"] = str(engine_dir)
        return TrtLLM(**kw)
    bc = BuildConfig()
    for k, v in build_config_kwargs(prompt_len, decode_tokens).items():
        setattr(bc, k, v)
    llm = TrtLLM(build_config=bc, **kw)
    llm.save(str(engine_dir))
    return llm


async def _one_request(llm: Any, prompt: list[int], sp: Any, n: int) -> tuple[float, float | None]:
    """Stream one request; TTFT/TPOT from perf metrics, else from wall-clock token stamps."""
    t0 = time.perf_counter()
    stamps: list[float] = []
    seen = 0
    out = None
    async for out in llm.generate_async(prompt, sp, streaming=True):
        k = len(out.outputs[0].token_ids)
        stamps += [time.perf_counter()] * (k - seen)
        seen = k
    if out is None or seen != n:
        raise AmoebaError(f"tensorrt_llm returned {seen} tokens, expected {n}")
    metrics = getattr(out.outputs[0], "request_perf_metrics", None)
    if metrics is not None and getattr(metrics, "timing_metrics", None) is not None:
        return ttft_tpot(metrics.timing_metrics, n)
    log.debug("no request_perf_metrics (older TensorRT-LLM): using wall-clock stamps")
    return stamps[0] - t0, ((stamps[-1] - stamps[0]) / (n - 1) if n > 1 else None)
