from __future__ import annotations

import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.device import DeviceSpec, load_device
from profiler.roofline import dtype_bytes, roofline
from tests.profiler.conftest import REPO

DEV = DeviceSpec(name="toy", kind="cpu", memory_bandwidth_gbs=100.0, peak_flops={"float32": 1e12})
G = ModelGeometry(n_layers=2, hidden=64, n_heads=4, n_kv_heads=2, intermediate=128, vocab=1000)


def test_decode_arithmetic_by_hand() -> None:
    # layer: q 64*64 + kv 2*64*32 + o 64*64 + mlp 3*64*128 + norms 2*64 = 37,504 params
    assert G.layer_params() == 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 128
    P = 10
    r = roofline(G, DEV, "decode", P, weight_bytes=4)
    weights = (2 * G.layer_params() + 1000 * 64 + 64) * 4
    kv = 2 * 2 * 2 * 16 * (P + 1) * 4  # layers * (k,v) * kv_heads * head_dim * tokens * bytes
    assert r.bytes_moved == weights + kv
    flops = 2 * (2 * (G.layer_params() - 128) + 1000 * 64) + 2 * 4 * 4 * 16 * (P + 1)
    assert r.flops == pytest.approx(flops)
    assert r.memory_ms == pytest.approx((weights + kv) / 100e9 * 1e3)
    assert r.floor_ms == max(r.memory_ms, r.compute_ms) and r.bound == "memory"


def test_prefill_turns_compute_bound_with_long_prompts() -> None:
    short = roofline(G, DEV, "prefill", 1)
    long = roofline(G, DEV, "prefill", 4096)
    assert short.bound == "memory" and long.bound == "compute"
    assert long.flops > 1000 * short.flops


def test_public_device_figures() -> None:
    a5000 = load_device("a5000", REPO / "device_profiles")
    assert a5000.roofline_only and a5000.memory_bandwidth_gbs == 768.0
    g = ModelGeometry.preset("llama2-7b")
    r = roofline(g.scaled_dims(32, 1.0), a5000, "decode", 128, weight_bytes=2, peak_dtype="float16")
    # 6.74e9 weights * 2 B / 768 GB/s = ~17.5 ms: the known decode floor of LLaMA2-7B fp16 on an A5000
    assert 17.0 < r.floor_ms < 18.0 and r.bound == "memory"
    half = roofline(g.scaled_dims(16, 1.0), a5000, "decode", 128, weight_bytes=2, peak_dtype="float16")
    assert half.floor_ms < 0.55 * r.floor_ms
    orin = load_device("orin-nx-16gb", REPO / "device_profiles")
    assert roofline(g.scaled_dims(32, 1.0), orin, "decode", 128, 2, "float16").floor_ms == pytest.approx(
        r.floor_ms * 768 / 102.4, rel=1e-6
    )


def test_dtype_bytes() -> None:
    assert dtype_bytes("float32") == 4 and dtype_bytes("f16") == 2 and dtype_bytes("q8_0") == 34 / 32
    with pytest.raises(AmoebaError, match="unknown dtype"):
        dtype_bytes("int3")
