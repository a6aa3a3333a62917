"""Blocks of shapes for :mod:`profiler.plan`: how many shapes are timed interleaved with the reference,
bounded by their weight bytes and the memory available now (names re-exported by ``profiler.plan``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, WidthAxes
from profiler.predict import per_layer_depths
from amoeba_core.shape import grid_key

if TYPE_CHECKING:
    from profiler.plan import ProfilePlan

BLOCK_SHAPES = 4  # shapes timed interleaved with the reference in one block (alive at once)
BLOCK_BYTES = 6 * 1024**3  # ... and at most this many weight bytes (fp32 estimate), the reference included
MEMORY_FACTOR = 4  # a loaded shape holds up to ~4x its fp32 weights (ONNX export + prefill/decode sessions)


def block_budget() -> int:
    """Weight bytes a block may hold: ``BLOCK_BYTES``, or less when the machine has less than
    ``MEMORY_FACTOR`` times that available now (ONNX Runtime's export and sessions of five
    smollm2-sized shapes took 9 GB and were OOM-killed on a shared 23 GB host)."""
    avail = _available_bytes()
    return BLOCK_BYTES if avail is None else max(1, min(BLOCK_BYTES, avail // MEMORY_FACTOR))


@dataclass
class _Point:
    w: float | WidthAxes  # width key (WidthAxes: separate attention/MLP widths)
    d: int
    phase: str
    key: dict
    redo: bool


def _weight_bytes(geometry: ModelGeometry, depth: int, width: float | WidthAxes) -> int:
    """Weight bytes of a shape at fp32 (an upper bound for the flows' dtypes)."""
    return 4 * geometry.scaled_dims(depth, width).n_params()


def _blocks(points: list[_Point], shapes: int, nbytes: Callable[[int, float], int],
            max_bytes: int = BLOCK_BYTES, ref_bytes: int = 0) -> list[list[_Point]]:
    """Consecutive points grouped so that a group holds at most ``shapes`` distinct (d, w) whose
    weights (``nbytes``), together with the reference's (``ref_bytes``, alive all along), fit
    ``max_bytes`` (a shape that does not fit with others gets a group of its own: two models,
    the reference and it, are the least a paired block holds; :func:`_check_memory` refuses a
    plan where even that exceeds the machine's available memory)."""
    out: list[list[_Point]] = []
    seen: set[tuple[int, float]] = set()
    used = ref_bytes
    for pt in points:
        shape = (pt.d, pt.w)
        if shape not in seen:
            b = nbytes(*shape)
            if not out or len(seen) >= shapes or (seen and used + b > max_bytes):
                out.append([])
                seen, used = set(), ref_bytes
            seen.add(shape)
            used += b
        out[-1].append(pt)
    return out


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_memory(plan: ProfilePlan, nbytes: Callable[[int, float], int], points: list[_Point]) -> None:
    """Refuse (before anything is timed) a CPU plan whose reference and largest shape cannot be
    loaded at once in the memory available now."""
    if plan.config.device != "cpu" or not points:
        return
    avail = _available_bytes()
    need = nbytes(*plan.reference) + max(nbytes(pt.d, pt.w) for pt in points)
    if avail is not None and need > avail:
        raise AmoebaError(
            f"the paired protocol loads the reference {grid_key(*plan.reference)} and each shape at once: "
            f"~{need / 1e9:.1f} GB (fp32 estimate) but {avail / 1e9:.1f} GB are available; "
            f"use --per-layer (its reference is the depth-{max(per_layer_depths(plan.geometry.n_layers))} model)"
        )
