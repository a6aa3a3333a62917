"""PyTorch eager flow: a stock transformers ``LlamaForCausalLM`` with random weights.

prefill: a prompt of ``prompt_len`` tokens from an empty ``DynamicCache`` (logits of the last
token only, i.e. time to first token). decode: one token on top of a ``prompt_len``-token
cache; the cache is prepared outside the timed region and cropped back to ``prompt_len``
before each run, so every timed step attends to exactly ``prompt_len`` cached tokens.

To keep a profile sweep fast the flow reuses weights across depths: ``build`` of a geometry
that differs from the previous one only in ``n_layers`` (fewer layers) returns a model made of
the first layers of the previous one (the same modules, not copies), so a depth sweep builds
random weights once per width. Set ``options={"reuse_weights": False}`` (``-o reuse_weights=false``) to build each anew.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.shape import ModelGeometry
from profiler.flows.base import Flow, FlowConfig, Workload
from profiler.flows.options import PyTorchOptions

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "bfloat16", "float16")}


@functools.cache
def cache_kwarg() -> str:
    """The forward() argument that takes the KV cache: ``cache`` since transformers 5.x (passing
    ``past_key_values`` there works but warns on every run), ``past_key_values`` before."""
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


@dataclass
class TorchArtifact:
    model: Any
    geometry: ModelGeometry
    device: str
    caches: dict[int, Any] = field(default_factory=dict)  # prompt_len -> prepared DynamicCache


class PyTorchFlow(Flow):
    name: ClassVar[str] = "pytorch"
    install_hint: ClassVar[str] = "pip install torch transformers"
    options_model: ClassVar[type[PyTorchOptions]] = PyTorchOptions

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.dtype not in _DTYPES[cfg.device]:
            raise AmoebaError(
                f"pytorch flow on {cfg.device}: dtype must be one of {_DTYPES[cfg.device]}, got {cfg.dtype!r}"
            )
        if cfg.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise NotInstalledError("pytorch flow: CUDA is not available on this machine (use --torch-device cpu)")
        self._pool: tuple[ModelGeometry, Any] | None = None

    @classmethod
    def check_available(cls) -> None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            raise NotInstalledError(
                f"pytorch flow needs torch and transformers ({e}); install with: {cls.install_hint}"
            ) from None

    # -- helpers ---------------------------------------------------------------------
    def _threads(self) -> None:
        import torch

        if self.config.threads and torch.get_num_threads() != self.config.threads:
            torch.set_num_threads(self.config.threads)

    def _sync(self) -> None:
        if self.config.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def build(self, geometry: ModelGeometry) -> TorchArtifact:
        from amoeba_core.model import llama_config, random_llama

        self._threads()
        reuse = self.options.reuse_weights
        if reuse and self._pool is not None:
            g0, full = self._pool
            if (
                replace(g0, n_layers=geometry.n_layers, name="") == replace(geometry, name="")
                and geometry.n_layers <= g0.n_layers
            ):
                return TorchArtifact(
                    _first_layers(full, llama_config(geometry), geometry.n_layers), geometry, self.config.device
                )
        self._pool = None
        model = random_llama(geometry, self.config.dtype).to(self.config.device)
        if reuse:
            self._pool = (geometry, model)
        return TorchArtifact(model, geometry, self.config.device)

    def _input(self, art: TorchArtifact, n: int, batch: int) -> torch.Tensor:
        import torch

        g = torch.Generator().manual_seed(n)
        return torch.randint(0, art.geometry.vocab, (batch, n), generator=g).to(art.device)

    def _cache(self, art: TorchArtifact, work: Workload) -> Any:
        """A cache holding exactly ``prompt_len`` tokens (built once, cropped back after each step)."""
        import torch
        from transformers import DynamicCache

        key = (work.prompt_len, work.batch)
        cache = art.caches.get(key)  # type: ignore[call-overload]
        if cache is None:
            if work.prompt_len >= art.geometry.max_position:
                raise AmoebaError(
                    f"prompt_len {work.prompt_len} exceeds the model's {art.geometry.max_position} positions"
                )
            cache = DynamicCache(config=art.model.config)
            with torch.inference_mode():
                art.model(
                    input_ids=self._input(art, work.prompt_len, work.batch),
                    **{cache_kwarg(): cache},
                    use_cache=True,
                    logits_to_keep=1,
                )
            art.caches[key] = cache  # type: ignore[index]
        extra = cache.get_seq_length() - work.prompt_len
        if extra > 0:
            cache.crop(-extra)
        return cache

    def run_once(self, artifact: TorchArtifact, workload: Workload) -> float:
        import torch

        self._threads()
        art, work = artifact, workload
        model = art.model
        if work.phase == "prefill":
            from transformers import DynamicCache

            ids = self._input(art, work.prompt_len, work.batch)
            cache = DynamicCache(config=model.config)
            self._sync()
            with torch.inference_mode():
                t0 = time.perf_counter()
                model(input_ids=ids, **{cache_kwarg(): cache}, use_cache=True, logits_to_keep=1)
                self._sync()
                return time.perf_counter() - t0
        cache = self._cache(art, work)
        ids = self._input(art, 1, work.batch)
        pos = torch.tensor([work.prompt_len], device=art.device)
        self._sync()
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(input_ids=ids, **{cache_kwarg(): cache}, use_cache=True, cache_position=pos)
            self._sync()
            return time.perf_counter() - t0

    def close(self, artifact: TorchArtifact) -> None:
        artifact.caches.clear()

    def environment(self) -> dict[str, Any]:
        import torch
        import transformers

        env = super().environment()
        env.update(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "torch_threads": torch.get_num_threads(),
                "device": self.config.device,
            }
        )
        if self.config.device == "cuda":
            env["gpu"] = torch.cuda.get_device_name(0)
        return env

    @property
    def variant(self) -> str:
        return self.config.dtype if self.config.device == "cpu" else f"{self.config.device}-{self.config.dtype}"


def _first_layers(full: Any, config: Any, depth: int) -> Any:
    """A LlamaForCausalLM sharing ``full``'s modules but running only its first ``depth`` layers."""
    import torch

    inner = copy.copy(full.model)
    inner._modules = dict(full.model._modules)
    inner.layers = torch.nn.ModuleList(list(full.model.layers)[:depth])
    inner.config = config
    view = copy.copy(full)
    view._modules = dict(full._modules)
    view.model = inner
    view.config = config
    return view
