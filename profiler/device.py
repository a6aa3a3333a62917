"""Device specs: ``device_profiles/<device>/device.yaml`` (bandwidth, peak FLOP/s, memory, provenance).

``cpu-host`` is detected on first use: CPU model and memory from /proc, memory bandwidth from a
short copy benchmark (``torch`` ``dst.copy_(src)`` of a 256 MiB float32 buffer, best of 5,
counting read + write bytes) and peak FLOP/s from a short ``torch.mm`` benchmark per dtype
(2048x2048, best of 3; smaller where one product of that dtype would take long: :func:`matmul_size`).
Both are measured *achievable* figures on this host, recorded with the thread count. Spec-only devices
(a5000, orin-nx-16gb) carry public datasheet figures and ``roofline_only: true``: their latencies are
roofline floors, never measurements.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amoeba_core.errors import AmoebaError

log = logging.getLogger(__name__)

HOST = "cpu-host"
DEVICE_FILE = "device.yaml"


def profiles_root(root: Path | str | None = None) -> Path:
    """``root``, else ``$AMOEBA_PROFILES``, else ``./device_profiles``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("AMOEBA_PROFILES", "device_profiles"))


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str  # "cpu" | "gpu"
    memory_bandwidth_gbs: float
    peak_flops: dict[str, float]  # dtype -> FLOP/s
    memory_gb: float | None = None
    roofline_only: bool = False
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # provenance of each figure
    created: str = ""

    def peak(self, dtype: str) -> float:
        if dtype in self.peak_flops:
            return float(self.peak_flops[dtype])
        order = ("float32", "float16", "bfloat16") if self.kind == "cpu" else ("float16", "bfloat16", "float32")
        for alt in order:
            if alt in self.peak_flops:
                log.info("device %s has no peak for %s; using %s", self.name, dtype, alt)
                return float(self.peak_flops[alt])
        raise AmoebaError(f"device {self.name}: no peak FLOP/s in its spec")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> DeviceSpec:
        try:
            return cls(
                name=str(d["name"]),
                kind=str(d.get("kind", "cpu")),
                memory_bandwidth_gbs=float(d["memory_bandwidth_gbs"]),
                peak_flops={str(k): float(v) for k, v in dict(d["peak_flops"]).items()},
                memory_gb=None if d.get("memory_gb") is None else float(d["memory_gb"]),
                roofline_only=bool(d.get("roofline_only", False)),
                description=str(d.get("description", "")),
                source=dict(d.get("source") or {}),
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise AmoebaError(f"corrupt device spec {where}: {e!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_url(root: Path | str | None) -> bool:
    return isinstance(root, str) and "://" in root


def _pushed_specs(root: Path | str | None) -> dict[str, dict[str, Any]]:
    """Specs pushed into the store of ``root`` (``amoeba push``); the folder's files come first."""
    from profiler.store import open_store

    return open_store(root).device_specs()


def list_devices(root: Path | str | None = None) -> list[str]:
    """Devices with a spec: ``<root>/<name>/device.yaml`` files, and specs pushed into the store."""
    names: set[str] = set()
    base = None if _is_url(root) else profiles_root(root)
    if base is not None and base.is_dir():
        names |= {p.name for p in base.iterdir() if (p / DEVICE_FILE).is_file()}
    if _is_url(root) or (base is not None and base.is_dir()):
        names |= set(_pushed_specs(root))
    return sorted(names)


def spec_only_root(root: Path | str | None = None, prefix: str = "amoeba-") -> Path:
    """A new temporary profiles root holding only the device specs (``device.yaml``) of ``root``:
    no tables, no caches — for smoke runs and for timing into an empty root."""
    import shutil
    import tempfile

    src = profiles_root(root)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    for name in list_devices(src):
        (tmp / name).mkdir()
        shutil.copy(src / name / DEVICE_FILE, tmp / name / DEVICE_FILE)
    return tmp


def load_device(name: str, root: Path | str | None = None) -> DeviceSpec:
    """The spec of device ``name``: its ``device.yaml`` in the profiles folder, else one pushed into the store."""
    path = None if _is_url(root) else profiles_root(root) / name / DEVICE_FILE
    if path is None or not path.is_file():
        pushed = _pushed_specs(root) if _is_url(root) or profiles_root(root).is_dir() else {}
        if name in pushed:
            return DeviceSpec.from_dict(pushed[name], f"device {name} in the store")
        known = list_devices(root)
        raise AmoebaError(
            f"unknown device {name!r}; known: {', '.join(known) or '(none)'}"
            + ("" if name == HOST else f" (only {HOST} is detected automatically)")
        )
    assert path is not None
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError) as e:
        raise AmoebaError(f"corrupt device spec {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise AmoebaError(f"corrupt device spec {path}: not a mapping")
    return DeviceSpec.from_dict(data, str(path))


def save_device(spec: DeviceSpec, root: Path | str | None = None) -> Path:
    folder = profiles_root(root) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DEVICE_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    os.replace(tmp, path)
    return path


def measure_bandwidth_gbs(mib: int = 256, repeats: int = 5, threads: int | None = None) -> float:
    """Copy bandwidth: bytes read + written per second, best of ``repeats``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    n = mib * 1024 * 1024 // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def matmul_size(dtype: str = "float32", largest: int = 2048, call_s: float = 0.1, threads: int | None = None) -> int:
    """The size of :func:`measure_peak_flops`'s products for ``dtype``: doubled from 256 up to ``largest``
    while one ``torch.mm`` takes under ``call_s`` seconds. A dtype the CPU has no fast kernel for is then
    timed on smaller products instead of for minutes: bfloat16 on an AVX2-only EPYC (no AVX-512 BF16) ran
    at 0.8 GFLOP/s at 1024 and about a minute per 2048 product, four products per detection."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    size = 256
    while size < largest:
        a = torch.randn(size, size).to(getattr(torch, dtype))
        t0 = time.perf_counter()
        torch.mm(a, a)
        if time.perf_counter() - t0 >= call_s:
            break
        size *= 2
    return min(size, largest)


def measure_peak_flops(dtype: str = "float32", size: int = 2048, repeats: int = 3, threads: int | None = None) -> float:
    import torch

    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def _meminfo_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def detect_host(threads: int | None = None) -> DeviceSpec:
    import torch

    from profiler.measure import cpu_model

    threads = threads or torch.get_num_threads()
    bw = measure_bandwidth_gbs(threads=threads)
    sizes = {dt_: matmul_size(dt_, threads=threads) for dt_ in ("float32", "bfloat16")}
    peaks = {dt_: measure_peak_flops(dt_, size=n, threads=threads) for dt_, n in sizes.items()}
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return DeviceSpec(
        name=HOST,
        kind="cpu",
        memory_bandwidth_gbs=round(bw, 2),
        peak_flops={k: float(f"{v:.4g}") for k, v in peaks.items()},
        memory_gb=round(_meminfo_gb() or 0.0, 2) or None,
        roofline_only=False,
        description=f"{cpu_model()}, {os.cpu_count()} logical cores",
        source={
            "memory_bandwidth_gbs": f"measured: torch copy_ of a 256 MiB float32 buffer, read+write bytes, best of 5, "
            f"{threads} threads, torch {torch.__version__}",
            "peak_flops": "measured: torch.mm per dtype ("
            + ", ".join(f"{k} {n}x{n}" for k, n in sizes.items())
            + f"), best of 3, {threads} threads (achievable, not datasheet)",
            "memory_gb": "/proc/meminfo MemTotal",
        },
        created=now,
    )


def detect_cuda(name: str) -> DeviceSpec:
    """The local CUDA GPU: measured device-to-device copy bandwidth and matmul peaks (fp32/fp16/bf16)."""
    import torch

    from amoeba_core.errors import NotInstalledError

    if not torch.cuda.is_available():
        raise NotInstalledError("CUDA is not available on this machine")
    n = 512 * 1024 * 1024 // 4
    src = torch.ones(n, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    bw = 2 * n * 4 / best / 1e9
    peaks = {}
    for dt_ in ("float32", "float16", "bfloat16"):
        a = torch.randn(8192, 8192, device="cuda").to(getattr(torch, dt_))
        torch.mm(a, a)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, a)
        torch.cuda.synchronize()
        peaks[dt_] = float(f"{5 * 2 * 8192**3 / (time.perf_counter() - t0):.4g}")
    props = torch.cuda.get_device_properties(0)
    return DeviceSpec(
        name=name,
        kind="gpu",
        memory_bandwidth_gbs=round(bw, 1),
        peak_flops=peaks,
        memory_gb=round(props.total_memory / 1024**3, 1),
        roofline_only=False,
        description=f"{props.name}, {props.multi_processor_count} SMs",
        source={
            "memory_bandwidth_gbs": "measured: torch copy_ of a 512 MiB float32 buffer on the GPU, read+write, "
            "best of 6",
            "peak_flops": "measured: torch.mm 8192x8192 per dtype, mean of 5 (achievable, not datasheet)",
            "torch": torch.__version__,
        },
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def ensure_device(
    name: str, root: Path | str | None = None, threads: int | None = None, flow_device: str = "cpu"
) -> DeviceSpec:
    """Load ``name``; detect and save it on first use for ``cpu-host`` and for any name when the flow runs on cuda."""
    path = profiles_root(root) / name / DEVICE_FILE
    if not path.exists() and name == HOST:
        log.info("detecting %s (bandwidth and matmul benchmarks)", HOST)
        save_device(detect_host(threads), root)
    elif not path.exists() and flow_device == "cuda":
        log.info("detecting the local GPU as device %s", name)
        save_device(detect_cuda(name), root)
    return load_device(name, root)
