"""Device side: deployment flows, timing protocol, latency tables, predictor, roofline."""

from __future__ import annotations
