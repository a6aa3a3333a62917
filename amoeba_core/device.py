"""Where and in what precision the model side runs: ``--device`` and ``--dtype``.

``resolve_device("auto")`` is the first accelerator present (CUDA, then Apple MPS), else the CPU;
``cpu``, ``cuda``, ``cuda:N`` and ``mps`` name one. A device that is not there is a one-line
:class:`AmoebaError` (the CLI exits 2). ``resolve_dtype(None, device)`` is bfloat16 where the
device computes in it natively (CUDA with bf16 support), float16 on MPS, float32 on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amoeba_core.errors import AmoebaError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("float32", "bfloat16", "float16")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The torch device for ``spec`` (see the module docstring); refuses one that is absent."""
    import torch

    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise AmoebaError("device 'mps' is not available on this machine (no Apple MPS backend); use --device cpu")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise AmoebaError(f"bad device {spec!r}: expected cuda or cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            raise AmoebaError(
                f"device {spec!r} is not available: this torch ({torch.__version__}) sees no CUDA GPU; "
                "use --device cpu (or auto)"
            )
        index = int(index_text) if index_text else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise AmoebaError(f"device {spec!r} is not available: {count} CUDA GPU(s) present (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    raise AmoebaError(f"unknown device {spec!r}; choose one of: {', '.join(DEVICES)}")


def default_dtype(device: torch.device) -> torch.dtype:
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The torch dtype for ``name`` (``None``/``auto``: :func:`default_dtype` of ``device``)."""
    import torch

    if name is None or name.strip().lower() == "auto":
        return default_dtype(device)
    text = name.strip().lower()
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    text = aliases.get(text, text)
    if text not in DTYPES:
        raise AmoebaError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)} (or auto)")
    dtype = getattr(torch, text)
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise AmoebaError(f"{device} does not support bfloat16; use --dtype float16 or float32")
    return dtype


def place(spec: str | None = "auto", dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` from the CLI's ``--device``/``--dtype`` values, both validated."""
    device = resolve_device(spec)
    return device, resolve_dtype(dtype, device)
