"""ONNX Runtime flow: prefill and decode-with-KV-cache graphs of a geometry, timed with IOBinding.

Export. Two fp32 graphs of one random-weight LLaMA (``amoeba_core.model.random_llama``) run
through the explicit-cache decoder of :mod:`profiler.flows._kv_llama`, with dynamic lengths:

* ``prefill/model.onnx``: ``input_ids[1,P] -> logits[1,V], present_k_0, present_v_0, ...`` (each
  ``[1, n_kv, P, head_dim]``; logits of the last token only).
* ``decode/model.onnx``: ``input_ids[1,1], past_k_0, past_v_0, ... [1, n_kv, S, hd] -> logits,
  present_* [1, n_kv, S+1, hd]``; the new token's position is ``S``, read from the past's shape.

The default exporter is the TorchScript one (``torch.onnx.export(..., dynamo=False)``): with
torch 2.13 it exports the tiny model in about 0.5 s with dynamic lengths, where the dynamo
exporter (``options={"exporter": "dynamo"}``, needs onnxscript) takes 20-30 s for the same graphs
on this 2-core machine; both give logits equal to transformers (max diff ~1e-7). Exports are
cached under ``$AMOEBA_CACHE/onnx/<geometry fingerprint>-<exporter>-s<seed>/``. HF/optimum
exporters are not used: optimum pins transformers < 4.58.

Timing. ``InferenceSession`` with ``ORT_ENABLE_ALL`` and, on CPU, one intra-op thread pool of
``config.threads`` threads shared by every session of the process (see :func:`_shared_pool`:
per-session pools spin and steal the cores from the next session the paired protocol times), the
CPU provider (or CUDA, asserted to be the session's first provider). prefill: one
``run_with_iobinding`` of ``P`` ids. decode: the past of ``P`` tokens is made once per ``P`` by an
untimed prefill and kept as ``OrtValue``\\ s on the device; each timed step binds it as
``past_*`` with one new id, so every step attends to exactly ``P`` cached tokens and the cache is
never copied host<->device.
"""

from __future__ import annotations

import logging
import time
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from amoeba_core.cache import cached, release
from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.shape import ModelGeometry
from profiler.flows.base import Flow, FlowConfig, Workload
from profiler.flows.options import OnnxExporter, OnnxRuntimeOptions

log = logging.getLogger(__name__)

EXPORTERS: tuple[str, ...] = typing.get_args(OnnxExporter)
PREFILL, DECODE = "prefill/model.onnx", "decode/model.onnx"
_OPSET = 17


def _names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kv}_{i}" for i in range(n_layers) for kv in "kv"]
    out = ["logits"] + [f"present_{kv}_{i}" for i in range(n_layers) for kv in "kv"]
    return past, out


def export_onnx(geometry: ModelGeometry, out_dir: str | Path, exporter: str = "torchscript", seed: int = 0) -> Path:
    """Export ``prefill.onnx`` and ``decode.onnx`` of a random-weight model of ``geometry`` into ``out_dir``."""
    import torch
    from torch import nn

    from amoeba_core.model import random_llama
    from profiler.flows._kv_llama import KvLlama

    if exporter not in EXPORTERS:
        raise AmoebaError(f"onnxruntime flow: exporter must be one of {EXPORTERS}, got {exporter!r}")
    out = Path(out_dir)
    pre_path, dec_path = out / PREFILL, out / DECODE
    pre_path.parent.mkdir(parents=True, exist_ok=True)
    dec_path.parent.mkdir(parents=True, exist_ok=True)  # own folders: >2 GB exports write external data files
    class PrefillGraph(nn.Module):
        def __init__(self, core: KvLlama) -> None:
            super().__init__()
            self.core = core

        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.core._run(ids, (), 0)

    class DecodeGraph(nn.Module):
        def __init__(self, core: KvLlama) -> None:
            super().__init__()
            self.core = core

        def forward(self, ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.core._run(ids, past, past[0].shape[2])  # position = cached length (dynamic)

    core = KvLlama(random_llama(geometry, "float32", seed))
    prefill, decode = PrefillGraph(core), DecodeGraph(core)
    n = geometry.n_layers
    past_names, out_names = _names(n)
    p = min(16, geometry.max_position - 1)
    ids = torch.randint(0, geometry.vocab, (1, p))
    past = tuple(torch.randn(1, geometry.n_kv_heads, p, geometry.head_dim) for _ in range(2 * n))
    one = torch.randint(0, geometry.vocab, (1, 1))
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(prefill, (ids,), str(pre_path), dynamo=False, opset_version=_OPSET,
                              input_names=["input_ids"], output_names=out_names,
                              dynamic_axes={"input_ids": {1: "P"}, **{k: {2: "P"} for k in out_names[1:]}})
            torch.onnx.export(decode, (one, *past), str(dec_path), dynamo=False, opset_version=_OPSET,
                              input_names=["input_ids", *past_names], output_names=out_names,
                              dynamic_axes={**{k: {2: "S"} for k in past_names},
                                            **{k: {2: "S1"} for k in out_names[1:]}})
        else:
            P = torch.export.Dim("P", min=2, max=geometry.max_position)
            S = torch.export.Dim("S", min=1, max=geometry.max_position - 1)
            torch.onnx.export(prefill, (ids,), str(pre_path), dynamo=True, verbose=False,
                              input_names=["input_ids"],
                              output_names=out_names, dynamic_shapes={"ids": {1: P}})
            torch.onnx.export(decode, (one, *past), str(dec_path), dynamo=True, verbose=False,
                              input_names=["input_ids", *past_names], output_names=out_names,
                              dynamic_shapes=({}, tuple({2: S} for _ in past)))
    return out


def cached_export(geometry: ModelGeometry, exporter: str = "torchscript", seed: int = 0,
                  cache_dir: str | Path | None = None) -> Path:
    """The export folder of ``geometry``, made once per (fingerprint, exporter, seed) and reused.

    Written and budgeted by :func:`amoeba_core.cache.cached` (atomic, LRU-evicted under the
    cache cap, pinned until the artifact is closed).
    """
    name = f"{geometry.fingerprint}-{exporter}-s{seed}"

    def make(tmp: Path) -> None:
        log.info("exporting %s to ONNX (%s) as %s", geometry.name, exporter, name)
        export_onnx(geometry, tmp, exporter, seed)

    def complete(p: Path) -> bool:
        return (p / DECODE).is_file() and (p / PREFILL).is_file()

    if cache_dir:
        return cached(name, make, root=Path(cache_dir), folder=True, complete=complete)
    return cached(name, make, namespace="onnx", folder=True, complete=complete)


@dataclass
class OrtArtifact:
    folder: Path
    geometry: ModelGeometry
    prefill: Any
    decode: Any
    device: str
    pasts: dict[int, list[Any]] = field(default_factory=dict)  # prompt_len -> present OrtValues


_POOL: dict[str, int] = {}  # the process-wide intra-op pool's size, once created


def _shared_pool(threads: int) -> bool:
    """Use one intra-op thread pool for every CPU session of this process (True), sized ``threads``.

    With ORT's default per-session pools, every session owns its threads and they spin for a while
    after each run. The paired protocol alternates two sessions sample by sample, so the previous
    session's spinning threads took the cores from the one being timed: on a 2-core host the
    full-size SmolLM2 decode step took 54 ms interleaved against 24 ms alone, and ratios of two
    shapes moved by up to 22% between runs. With one shared pool (as every PyTorch model of a
    process shares one OpenMP team), interleaved and alone agree (23.4 vs 22.4 ms) and keep ORT's
    default spinning (benchmarks/ort_thread_pool.py). The pool's size is fixed once the first session exists, and ORT then refuses
    per-session pools: a later session asking for another thread count is an error naming the fix."""
    if "threads" not in _POOL:
        from onnxruntime.capi import _pybind_state as C

        try:
            C.set_global_thread_pool_sizes(int(threads), 1)
        except Exception as e:  # noqa: BLE001 - the environment already exists (another session came first)
            log.info("onnxruntime: no shared thread pool (%s); sessions keep their own threads", e)
            _POOL["threads"] = -1
            return False
        _POOL["threads"] = int(threads)
    if _POOL["threads"] != int(threads):  # ORT refuses per-session pools once the shared one exists
        raise AmoebaError(f"onnxruntime: this process's thread pool has {_POOL['threads']} threads, not {threads}; "
                          "time another thread count in another process (e.g. another `amoeba profile` run)")
    return True


class OnnxRuntimeFlow(Flow):
    name: ClassVar[str] = "onnxruntime"
    install_hint: ClassVar[str] = "pip install 'amoeba-deploy[onnx]' (onnxruntime, or onnxruntime-gpu for CUDA)"
    options_model: ClassVar[type[OnnxRuntimeOptions]] = OnnxRuntimeOptions
    # one session of a small shape ran 6-10% off another session of it, with tight intervals; rebuilt
    # each round, rows reproduced 95% within 5% instead of 85% (benchmarks/reproducibility.py)
    rebuild_between_rounds: ClassVar[bool] = True

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__(config)
        if self.config.dtype != "float32":
            raise AmoebaError(f"onnxruntime flow exports float32 graphs only, got dtype {self.config.dtype!r}")
        self.exporter = self.options.exporter  # validated: one of EXPORTERS
        if self.config.device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise NotInstalledError("onnxruntime flow: the CUDA provider is missing: pip install onnxruntime-gpu "
                                        "(instead of onnxruntime)")

    @classmethod
    def check_available(cls) -> None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise NotInstalledError(f"onnxruntime is not installed: {cls.install_hint}") from None

    def _session(self, path: Path) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.config.device == "cpu" and _shared_pool(self.config.threads):
            so.use_per_session_threads = False  # the process-wide pool: see _shared_pool
        elif self.config.threads:
            so.intra_op_num_threads = self.config.threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.config.device == "cuda":
            s = ort.InferenceSession(str(path), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if s.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back to CPU silently
                raise NotInstalledError(f"onnxruntime flow: CUDA provider not used (got {s.get_providers()})")
            return s
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def build(self, geometry: ModelGeometry) -> OrtArtifact:
        folder = cached_export(geometry, self.exporter, self.options.seed, self.options.cache_dir)
        return OrtArtifact(folder, geometry, self._session(folder / PREFILL), self._session(folder / DECODE),
                           self.config.device)

    # -- timing ----------------------------------------------------------------------------
    def _ids(self, art: OrtArtifact, n: int, salt: int = 0) -> Any:
        import numpy as np

        rng = np.random.default_rng(n + 7919 * salt)
        return rng.integers(0, art.geometry.vocab, size=(1, n), dtype=np.int64)

    def _ov(self, art: OrtArtifact, a: Any) -> Any:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(a, art.device, 0)

    def _bind(self, sess: Any, art: OrtArtifact, feeds: dict[str, Any]) -> Any:
        io = sess.io_binding()
        for k, v in feeds.items():
            io.bind_ortvalue_input(k, v)
        for o in sess.get_outputs():
            io.bind_output(o.name, art.device)
        return io

    def _timed(self, sess: Any, io: Any) -> float:
        io.synchronize_inputs()
        t0 = time.perf_counter()
        sess.run_with_iobinding(io)
        io.synchronize_outputs()
        return time.perf_counter() - t0

    def run_once(self, artifact: OrtArtifact, workload: Workload) -> float:
        art, work = artifact, workload
        if work.batch != 1:
            raise AmoebaError("onnxruntime flow: only batch 1 is supported")
        p = work.prompt_len
        if p + 1 > art.geometry.max_position:
            raise AmoebaError(f"prompt_len {p} exceeds the model's {art.geometry.max_position} positions")
        if work.phase == "prefill":
            io = self._bind(art.prefill, art, {"input_ids": self._ov(art, self._ids(art, p))})
            return self._timed(art.prefill, io)
        past = art.pasts.get(p)
        if past is None:  # untimed: the cache of exactly p tokens, kept on the device
            io = self._bind(art.prefill, art, {"input_ids": self._ov(art, self._ids(art, p))})
            art.prefill.run_with_iobinding(io)
            past = art.pasts[p] = io.get_outputs()[1:]
        names, _ = _names(art.geometry.n_layers)
        feeds = {"input_ids": self._ov(art, self._ids(art, 1, salt=p)), **dict(zip(names, past))}
        return self._timed(art.decode, self._bind(art.decode, art, feeds))

    def close(self, artifact: OrtArtifact) -> None:
        artifact.pasts.clear()
        release(artifact.folder)

    def environment(self) -> dict[str, Any]:
        import onnxruntime as ort
        import torch

        env = super().environment()
        env.update({"onnxruntime": ort.__version__, "torch_export": torch.__version__, "exporter": self.exporter,
                    "opset": _OPSET, "device": self.config.device,
                    "provider": "CUDAExecutionProvider" if self.config.device == "cuda" else "CPUExecutionProvider"})
        return env

    @property
    def variant(self) -> str:
        return "float32" if self.config.device == "cpu" else "cuda-float32"
