"""llama.cpp flow (llama-cpp-python): a GGUF of the geometry, timed with ``Llama.eval``.

``build`` writes (once, cached on disk, see :mod:`profiler.flows._gguf`) a random-weight GGUF in
``options.quant`` (``f16``, ``q8_0`` or ``q4_0``) and loads it; ``options.gguf`` loads a
given file instead (e.g. a :func:`shallow_gguf` copy of a real model), which must match the
geometry's sizes.

prefill: ``reset()`` then ``eval`` of ``prompt_len`` tokens from an empty KV cache, one batch
(``n_batch = n_ubatch >= prompt_len``, so nothing is chunked), then ``llama_synchronize``.
decode: the cache holds a fixed token sequence; untimed, it is extended to ``prompt_len`` tokens
if needed; then ``n_tokens = prompt_len`` and one ``eval([tok])`` is timed. ``eval`` first removes
every cached position ``>= n_tokens``, so each timed step attends to exactly ``prompt_len``
cached tokens (the previous step's token is dropped). Prefill and decode share the sequence, so
a prefill leaves a valid decode cache behind. No sampling runs, so random weights hitting EOS
does not matter.

``n_threads`` (decode) and ``n_threads_batch`` (prefill) are both ``config.threads`` (0: the
library defaults). The context is sized to the largest prompt seen; a longer prompt re-creates it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from amoeba_core.cache import release
from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.shape import ModelGeometry
from profiler.flows._gguf import cached_random_gguf, shallow_gguf
from profiler.flows.base import Flow, FlowConfig, Workload
from profiler.flows.options import LlamaCppOptions

log = logging.getLogger(__name__)

_MIN_CTX = 256


@dataclass
class LlamaCppArtifact:
    path: Path
    geometry: ModelGeometry
    llm: Any = None
    n_ctx: int = 0
    tokens: list[int] = field(default_factory=list)  # the fixed sequence prefill/decode use
    valid: int = 0  # leading tokens of ``tokens`` whose K/V sit in the cache


class LlamaCppFlow(Flow):
    name: ClassVar[str] = "llamacpp"
    install_hint: ClassVar[str] = "pip install 'amoeba-deploy[llamacpp]' (compiles llama.cpp, several minutes)"
    # q4_0's reference level was bimodal between loads (4.4 vs 5.4 ms); rebuilt each round, its rows
    # reproduced 95% within 5% instead of 0-5% (benchmarks/reproducibility.py)
    rebuild_between_rounds: ClassVar[bool] = True
    options_model: ClassVar[type[LlamaCppOptions]] = LlamaCppOptions

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__(config)  # options validated: quant is one of QUANTS
        quant = self.options.quant
        if self.config.device != "cpu":
            raise AmoebaError("llamacpp flow: only device 'cpu' is supported (this build of llama.cpp is CPU-only)")
        self.quant = quant

    @classmethod
    def check_available(cls) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise NotInstalledError(f"llama-cpp-python is not installed: {cls.install_hint}") from None

    # -- build -----------------------------------------------------------------------------
    def build(self, geometry: ModelGeometry) -> LlamaCppArtifact:
        given = self.options.gguf
        if given:
            path = Path(given)
            if not path.is_file():
                raise AmoebaError(f"GGUF file {path} does not exist")
        else:
            path = cached_random_gguf(geometry, self.quant, seed=self.options.seed,
                                      cache_dir=self.options.cache_dir)
        art = LlamaCppArtifact(path, geometry)
        self._ensure_ctx(art, _MIN_CTX)
        if given:
            _check_dims(art.llm, geometry, path)
        return art

    def _ensure_ctx(self, art: LlamaCppArtifact, need: int) -> None:
        """A context of at least ``need`` positions (re-created, cache emptied, when too small)."""
        if art.llm is not None and art.n_ctx >= need:
            return
        import llama_cpp

        n_ctx = max(_MIN_CTX, 1 << (max(need, 1) - 1).bit_length())
        n_ctx = min(n_ctx, max(art.geometry.max_position, need))
        if need > art.geometry.max_position:
            raise AmoebaError(f"prompt_len {need - 1} exceeds the model's {art.geometry.max_position} positions")
        self.close(art)
        threads = self.config.threads or None
        art.llm = llama_cpp.Llama(model_path=str(art.path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                  n_threads=threads, n_threads_batch=threads, n_gpu_layers=0,
                                  no_perf=False, verbose=False)
        art.n_ctx = n_ctx
        art.valid = 0
        vocab = art.llm.n_vocab()
        art.tokens = [3 + (i * 7919) % max(1, vocab - 3) for i in range(n_ctx)]  # deterministic, no bos/eos

    # -- timing ----------------------------------------------------------------------------
    def run_once(self, artifact: LlamaCppArtifact, workload: Workload) -> float:
        import llama_cpp

        art, work = artifact, workload
        if work.batch != 1:
            raise AmoebaError("llamacpp flow: only batch 1 is supported")
        p = work.prompt_len
        self._ensure_ctx(art, p + 1)
        llm = art.llm
        ctx = llm._ctx.ctx
        if work.phase == "prefill":
            ids = art.tokens[:p]
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            llama_cpp.llama_synchronize(ctx)
            dt = time.perf_counter() - t0
            art.valid = p
            return dt
        if art.valid < p:  # extend the cached prefix, untimed
            llm.n_tokens = art.valid
            llm.eval(art.tokens[art.valid:p])
            llama_cpp.llama_synchronize(ctx)
            art.valid = p
        llm.n_tokens = p  # eval drops cached positions >= p: the context is exactly p tokens
        tok = art.tokens[p]
        t0 = time.perf_counter()
        llm.eval([tok])
        llama_cpp.llama_synchronize(ctx)
        dt = time.perf_counter() - t0
        art.valid = p  # position p now holds the decode token; only [0, p) stays valid
        return dt

    def close(self, artifact: LlamaCppArtifact) -> None:
        if artifact.llm is not None:
            artifact.llm.close()
            artifact.llm = None
        release(artifact.path)  # the cached GGUF may be evicted again (no-op for a given file)

    def environment(self) -> dict[str, Any]:
        import llama_cpp

        env = super().environment()
        env.update({"llama_cpp_python": llama_cpp.__version__, "quant": self.quant, "dtype": self.quant,
                    "device": "cpu", "flash_attn": False, "n_batch": "n_ctx (no chunking)",
                    "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()})
        return env

    @property
    def variant(self) -> str:
        return self.quant


def _check_dims(llm: Any, geometry: ModelGeometry, path: Path) -> None:
    """The sizes llama.cpp read from ``path`` (its own header parse, fast) match ``geometry``."""
    meta = llm.metadata
    arch = meta.get("general.architecture", "llama")
    got = {"n_layers": meta.get(f"{arch}.block_count"), "hidden": meta.get(f"{arch}.embedding_length"),
           "n_heads": meta.get(f"{arch}.attention.head_count"),
           "n_kv_heads": meta.get(f"{arch}.attention.head_count_kv") or meta.get(f"{arch}.attention.head_count"),
           "intermediate": meta.get(f"{arch}.feed_forward_length"), "vocab": llm.n_vocab()}
    bad = {k: v for k, v in got.items() if v is None or int(v) != getattr(geometry, k)}
    if bad:
        want = {k: getattr(geometry, k) for k in bad}
        raise AmoebaError(f"GGUF {path.name} has {bad} but geometry {geometry.name} needs {want}")


__all__ = ["LlamaCppArtifact", "LlamaCppFlow", "shallow_gguf"]
