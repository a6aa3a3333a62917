"""Model side of AmoebaLLM: shapes, geometry, subnet selection, fine-tuning, export."""

from __future__ import annotations

from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.shape import ModelGeometry, ShapeRef, SubnetShape, parse_shape

__version__ = "0.1.0"
__all__ = ["AmoebaError", "ModelGeometry", "NotInstalledError", "ShapeRef", "SubnetShape", "parse_shape"]
