"""The interface every deployment flow implements.

A flow turns a :class:`ModelGeometry` (physical sizes of one subnet, see
``ModelGeometry.scaled``) into something runnable (``build``), and times one prefill or one
decode step on it. The timing *protocol* (warm-up, repeats, statistics) lives in
``profiler.measure``; a flow only knows how to run its runtime once, correctly synchronised.

A flow whose runtime is missing raises :class:`NotInstalledError` from ``check_available``
with the install command. It never returns a made-up number.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.flows.options import FlowOptions, parse_options

Phase = Literal["prefill", "decode"]
PHASES: tuple[Phase, ...] = ("prefill", "decode")


@dataclass(frozen=True)
class FlowConfig:
    """Options common to all flows. Pure: validates values, touches nothing."""

    dtype: str = "float32"
    threads: int = 0  # 0: the runtime's default
    device: str = "cpu"  # "cpu" or "cuda"
    # flow-specific: the flow's typed options (profiler.flows.options), or a raw {key: value} dict
    # that the flow validates into them when it is made (Flow.config then holds the typed model)
    options: FlowOptions | Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise AmoebaError(f"threads must be >= 0, got {self.threads}")
        if self.device not in ("cpu", "cuda"):
            raise AmoebaError(f"device must be 'cpu' or 'cuda', got {self.device!r}")


@dataclass(frozen=True)
class Workload:
    """What one timed call does.

    prefill: run a prompt of ``prompt_len`` tokens from an empty cache (time to first logits).
    decode: one new token attending to a KV cache of ``prompt_len`` tokens (per-token latency).
    """

    phase: Phase
    prompt_len: int = 128
    batch: int = 1

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise AmoebaError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.prompt_len < 1 or self.batch < 1:
            raise AmoebaError("prompt_len and batch must be >= 1")


class Flow(abc.ABC):
    """One deployment flow (runtime + model format)."""

    name: ClassVar[str]
    install_hint: ClassVar[str] = ""
    # rebuild artifacts between the paired protocol's rounds unless the user says otherwise
    # (MeasureConfig.rebuild): True where a loaded copy's speed was measured to vary from load to load
    rebuild_between_rounds: ClassVar[bool] = False
    # the flow's options (profiler.flows.options.FLOW_OPTIONS names the same model, without importing the flow)
    options_model: ClassVar[type[FlowOptions]] = FlowOptions

    def __init__(self, config: FlowConfig | None = None) -> None:
        config = config or FlowConfig()
        opts = parse_options(self.name, config.options, self.options_model)  # AmoebaError: unknown key, bad value
        self.config = dataclasses.replace(config, options=opts)

    @property
    def options(self) -> Any:
        """The typed options (an instance of ``options_model``)."""
        return self.config.options

    @classmethod
    @abc.abstractmethod
    def check_available(cls) -> None:
        """Raise NotInstalledError (with ``install_hint``) if the runtime cannot run here."""

    @abc.abstractmethod
    def build(self, geometry: ModelGeometry) -> Any:
        """Build or load a runnable artifact of this geometry (random weights are fine)."""

    @abc.abstractmethod
    def run_once(self, artifact: Any, workload: Workload) -> float:
        """Run the workload once, synchronised, and return its wall time in seconds.

        For decode the cache of ``prompt_len`` tokens is prepared outside the timed region;
        only the one new token is timed. Decode is measured directly, never derived as
        generate-minus-prefill.
        """

    def close(self, artifact: Any) -> None:  # noqa: B027 - optional hook
        """Free what ``build`` made."""

    def environment(self) -> dict[str, Any]:
        """Versions and settings that affect timing (recorded with every table)."""
        return {"flow": self.name, "dtype": self.config.dtype, "threads": self.config.threads}

    @property
    def variant(self) -> str:
        """Label that distinguishes configurations of one flow in a table (dtype, quant...)."""
        return self.config.dtype
