"""Host detection stays short where a dtype has no fast kernel (profiler.device.matmul_size)."""

from __future__ import annotations

import math

from profiler.device import matmul_size


def test_product_size_stops_growing_at_the_first_slow_product() -> None:
    assert matmul_size("float32", largest=2048, call_s=0.0) == 256  # every product counts as slow
    assert matmul_size("float32", largest=512, call_s=math.inf) == 512  # none does: up to the largest
    assert matmul_size("bfloat16", largest=200, call_s=math.inf) == 200  # never above the largest
