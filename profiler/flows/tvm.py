"""Apache TVM flow (the compiler under MLC-LLM): a shape compiled for the host CPU.

Route: ``torch.export`` of an explicit-KV-cache LLaMA (``_kv_llama``: fixed-shape prefill
``(1,P)`` and decode ``(1,1)`` graphs that take and return the cache as tensors) ->
``tvm.relax.frontend.torch.from_exported_program`` -> ``tvm.compile`` for
``{"kind": "llvm", "num-cores": T}`` -> ``relax.VirtualMachine``. Weights stay graph inputs
(``keep_params_as_input``), so compiling does not embed them. Graphs are compiled lazily, one
per (phase, prompt_len), during the first (warm-up) ``run_once`` of a shape; the executable is
kept by the flow, so a rebuild between the paired protocol's rounds (``--rebuild``; off by default
for TVM, see ``rebuild_between_rounds``) only loads it again: a new VM and new weight tensors.

Before compiling, ``FuseTransposeMatmul`` turns every ``x @ W.T`` (a ``permute_dims`` of the
weight feeding a ``matmul``) into one ``NT_matmul`` kernel. Without it the imported graph
transposes every weight matrix on every call (the LM head alone is 113 MB for SmolLM2): untuned
smollm2 d4 decode went from 324 ms to 34 ms with it (PyTorch: 17 ms). The figures in this
docstring are one-off development measurements (scratch scripts, medians of 10-30 runs).

Variants (recorded as separate table rows):

* ``untuned``: TVM's default CPU pipeline. Correct (checked against transformers) but its
  kernels keep the default loop nests (smollm2 d1 decode: 24.8 ms untuned, 5.7 ms tuned).
* ``tuned-<trials>``: MetaSchedule tuning of the kernels that carry the work (every
  ``matmul``/``NT_matmul``, ``softmax`` and the RMSNorm ``mean`` reductions; reshapes and
  element-wise glue keep the default schedule — tuning those too changed smollm2 d30 decode
  from 27.8 to 28.9 ms, i.e. nothing) with ``trials`` candidates per kernel, then the
  best schedule of each kernel from the database is applied (the ``static_shape_tuning``
  pipeline with 0 further trials). One database per device and budget,
  ``device_profiles/<device>/tvm_tuning/t<trials>/``: records are keyed by the kernel's TIR, so
  every depth, width and phase that shares a kernel (the LM head, a width's projections) reuses
  it, and a kernel with records is never tuned again — a depth sweep tunes once per width and
  an interrupted tuning resumes at the kernels it had not reached.

Known pitfalls in apache-tvm 0.27 found here (see FACTS.md):

* ``apache-tvm-ffi`` 0.1.15 segfaults in ``ToJSONGraph`` (``tvm.ir.save_json`` of any IR node),
  which MetaSchedule's database and builder use: pin ``apache-tvm-ffi<0.1.15`` (0.1.14.post1
  works). ``check_available`` refuses the bad combination with that message.
* MetaSchedule (main process and builder worker) imports ``tvm.s_tir.tensor_intrin``, whose
  TVMScript parser calls ``inspect.stack()`` hundreds of times: 255 s on this 2-core machine,
  far past the builder's default 30 s timeout, so every candidate "failed to build" and the
  worker was restarted forever. The flow imports it with a source-free ``inspect.stack``
  (8.7 s), in the worker initializer too, with a 90 s build timeout. (A 600 s timeout was
  worse: a candidate with heavy unrolling kept LLVM busy for minutes; at 90 s it is dropped.)
* ``x[:, -1, :]`` (negative index ``select``) imported wrongly (NaN logits); ``narrow`` is used.

Options: ``trials`` (per kernel; 0 = untuned), ``device_name`` (default ``cpu-host``),
``tuning_dir`` (overrides the folder), ``profiles_root``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.filelock import file_lock
from amoeba_core.shape import ModelGeometry
from profiler.flows._tvm_tune import TUNED_OPS, kernels_to_tune, pooled_builder, tune
from profiler.flows.base import Flow, FlowConfig, Workload
from profiler.flows.options import TvmOptions

log = logging.getLogger(__name__)

INSTALL = 'pip install "amoeba-deploy[tvm]"  (i.e. apache-tvm>=0.22 "apache-tvm-ffi<0.1.15" xgboost psutil cloudpickle)'


def ffi_is_broken(tvm_version: str, ffi_version: str) -> bool:
    """apache-tvm 0.27 with apache-tvm-ffi >= 0.1.15 segfaults in IR serialisation (found here)."""
    ffi = tuple(int(x) for x in ffi_version.split(".")[:3] if x.isdigit())
    return tvm_version.startswith("0.27") and ffi >= (0, 1, 15)


KEEP_COMPILED = 8  # executables a flow keeps for reloads (code only: weights are graph inputs)


def tuning_dir(trials: int, device_name: str = "cpu-host", profiles_root: str | Path | None = None) -> Path:
    """The MetaSchedule database of one device and per-kernel budget (shared by all geometries)."""
    root = Path(profiles_root) if profiles_root else Path(os.environ.get("AMOEBA_PROFILES", "device_profiles"))
    return root / device_name / "tvm_tuning" / f"t{int(trials)}"


def target_dict(threads: int) -> dict[str, Any]:
    """The LLVM host target; this TVM accepts only the JSON-dict form (not "llvm -num-cores 2")."""
    return {"kind": "llvm", "num-cores": max(1, int(threads))}


@dataclass
class Graph:
    vm: Any
    args: list[Any]  # inputs then weights, as tvm tensors


@dataclass
class Compiled:
    """A compiled graph without its weights: reloaded into a fresh VM on every build."""

    executable: Any
    param_names: tuple[str, ...]  # the weights' order as graph inputs (export's parameter order)


@dataclass
class TvmArtifact:
    geometry: ModelGeometry
    core: Any  # KvLlama
    graphs: dict[tuple[str, int], Graph] = field(default_factory=dict)


class TvmFlow(Flow):
    name: ClassVar[str] = "tvm"
    install_hint: ClassVar[str] = INSTALL
    options_model: ClassVar[type[TvmOptions]] = TvmOptions
    # A rebuild (``--rebuild``) is a reload: a fresh VM and fresh weight tensors from the compiled
    # executable (kept per shape in ``self._compiled``; not compiled again). Off by default: on the
    # 2-core VM it did not make two runs agree (reproducibility.py, tuned: 15% of rows within 5%
    # with reloads vs 75% without; ratios alone 70% vs 75%). Two processes a minute apart timed
    # d6-w0.75 / d30-w1 at 0.274-0.286 and 0.253-0.264 (two compiles of each shape per process),
    # while the reference itself went from 36 to 43 ms: the ratio moved with the host's speed.
    rebuild_between_rounds: ClassVar[bool] = False

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__(config)
        if self.config.dtype != "float32":
            raise AmoebaError(f"tvm flow compiles float32 for the CPU, got dtype {self.config.dtype!r}")
        if self.config.device != "cpu":
            raise AmoebaError("tvm flow targets the host CPU (llvm); use --flow-device cpu")
        self.trials = self.options.trials  # validated: >= 0 (trials_per_task is refused with a hint)
        self.threads = self.config.threads or len(os.sched_getaffinity(0))
        # the last KEEP_COMPILED executables (a block is the reference and up to 4 shapes, so a rebuild
        # between its rounds always finds them); older ones are dropped
        self._compiled: OrderedDict[tuple[ModelGeometry, str, int], Compiled] = OrderedDict()
        if self.config.threads:
            os.environ["TVM_NUM_THREADS"] = str(self.config.threads)  # read when TVM's pool starts

    @classmethod
    def check_available(cls) -> None:
        try:
            import tvm  # noqa: F401
            from tvm.relax.frontend.torch import from_exported_program  # noqa: F401
        except ImportError as e:
            raise NotInstalledError(f"tvm flow: Apache TVM is not installed ({e}); install with: {INSTALL}") from None
        from importlib.metadata import PackageNotFoundError, version

        try:
            ffi = version("apache-tvm-ffi")
        except PackageNotFoundError:
            return
        if ffi_is_broken(version("apache-tvm"), ffi):
            raise NotInstalledError(f"tvm flow: apache-tvm-ffi {ffi} segfaults with apache-tvm 0.27 "
                                    f'(IR serialisation); install with: pip install "apache-tvm-ffi<0.1.15"')

    # -- building ------------------------------------------------------------------------
    def build(self, geometry: ModelGeometry) -> TvmArtifact:
        import torch

        from amoeba_core.model import random_llama
        from profiler.flows._kv_llama import KvLlama

        with torch.no_grad():
            core = KvLlama(random_llama(geometry, "float32")).eval()
        return TvmArtifact(geometry, core)

    def compile(self, art: TvmArtifact, phase: str, prompt_len: int) -> Graph:
        """The fixed-shape graph of ``(phase, prompt_len)``, cached on the artifact.

        The first time a shape is seen: export, import, (tune,) compile. Later artifacts of the
        same shape (a rebuild between rounds) reuse the executable and only load it: a new VM and
        new tensors for the inputs and this artifact's weights.
        """
        key = (phase, prompt_len)
        if key in art.graphs:
            return art.graphs[key]
        import torch
        import tvm
        from tvm import relax

        from profiler.flows._kv_llama import Decode, Prefill, example_inputs

        t0 = time.perf_counter()
        module = Prefill(art.core) if phase == "prefill" else Decode(art.core, prompt_len)
        inputs = example_inputs(art.core, phase, prompt_len)
        ck = (art.geometry, phase, prompt_len)
        named = dict(module.named_parameters(remove_duplicate=False))  # tied weights appear under both names
        compiled = self._compiled.get(ck)
        if compiled is None:
            compiled = self._compiled[ck] = self._compile(module, inputs, named)
            while len(self._compiled) > KEEP_COMPILED:
                self._compiled.popitem(last=False)
            how = "compiled"
        else:
            self._compiled.move_to_end(ck)
            how = "loaded"
        dev = tvm.cpu()
        vm = relax.VirtualMachine(compiled.executable, dev)
        with torch.no_grad():
            args = [tvm.runtime.tensor(x.numpy(), dev) for x in inputs]
            args += [tvm.runtime.tensor(named[n].detach().numpy(), dev) for n in compiled.param_names]
        log.info("tvm %s graph P=%d of %s %s in %.1f s (%s)", phase, prompt_len, art.geometry.name, how,
                 time.perf_counter() - t0, self.variant)
        art.graphs[key] = Graph(vm, args)
        return art.graphs[key]

    def _compile(self, module: Any, inputs: tuple[Any, ...], named: dict[str, Any]) -> Compiled:
        import torch
        import tvm
        from tvm import relax
        from tvm.relax.frontend.torch import from_exported_program

        with torch.no_grad():
            ep = torch.export.export(module.eval(), inputs)
        mod = from_exported_program(ep, keep_params_as_input=True)
        mod, params = relax.frontend.detach_params(mod)
        names = tuple(ep.graph_signature.parameters)
        if len(names) != len(params["main"]) or any(tuple(named[n].shape) != tuple(p.shape)
                                                    for n, p in zip(names, params["main"])):
            raise AmoebaError("tvm flow: the imported graph's weights do not follow torch.export's parameter order")
        mod = relax.transform.FuseTransposeMatmul()(mod)  # x @ W.T as one kernel, no per-call transpose
        target = tvm.target.Target(target_dict(self.threads))
        if self.trials:
            mod = self._tuned(mod, target)
        return Compiled(tvm.compile(mod, target=target), names)

    def _tuned(self, mod: Any, target: Any) -> Any:
        from tvm import relax

        o = self.options
        work = Path(o.tuning_dir) if o.tuning_dir else tuning_dir(self.trials, o.device_name, o.profiles_root)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with file_lock(work / ".lock"):  # one tuner per database: its JSON files are appended to
            tuned, skipped = tune(mod, target, work, self.trials, self.threads)
        log.info("tvm tuning: %d kernel(s) tuned, %d already in %s (%.1f s)", tuned, skipped, work,
                 time.perf_counter() - t0)
        return relax.get_pipeline("static_shape_tuning", total_trials=0, target=target, work_dir=str(work))(mod)

    # -- timing ----------------------------------------------------------------------------
    def run_once(self, artifact: TvmArtifact, workload: Workload) -> float:
        if workload.batch != 1:
            raise AmoebaError("tvm flow compiles batch-1 graphs only")
        if workload.prompt_len + 1 > artifact.geometry.max_position:
            raise AmoebaError(f"prompt_len {workload.prompt_len} exceeds the model's positions")
        g = self.compile(artifact, workload.phase, workload.prompt_len)
        fn = g.vm["main"]
        t0 = time.perf_counter()
        out = fn(*g.args)  # CPU VM calls are synchronous: outputs exist when it returns
        dt = time.perf_counter() - t0
        del out
        return dt

    def close(self, artifact: TvmArtifact) -> None:
        artifact.graphs.clear()

    def environment(self) -> dict[str, Any]:
        env = super().environment()
        try:
            import tvm

            env["tvm"] = tvm.__version__
        except ImportError:
            pass
        env.update({"target": target_dict(self.threads), "trials_per_kernel": self.trials, "tuned_ops": list(TUNED_OPS),
                    "passes": ["FuseTransposeMatmul"], "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS")})
        return env

    @property
    def variant(self) -> str:
        return f"tuned-{self.trials}" if self.trials else "untuned"


__all__ = ["TUNED_OPS", "TvmFlow", "ffi_is_broken", "kernels_to_tune", "pooled_builder", "target_dict", "tune", "tuning_dir"]
