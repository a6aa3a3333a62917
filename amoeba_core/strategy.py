"""The output of Stage 1: which layers each depth keeps and how every layer ranks its width.

A strategy is saved as YAML and loaded by evaluation, fine-tuning, search and export::

    model: {source, fingerprint, geometry}
    depth: {metric, split, layers: {30: [0..29], 29: [...], ...}}
    width: {metric, split, widths: [1, 0.875, ...], rankings: [{groups, heads, channels}, ...]}
    data: {data_version, data_fingerprint, calib_seq_len, calib_windows, stats_windows, val_windows}

Per layer the ranking lists KV groups, query heads inside each group (local index) and MLP
channels, most important first. Any width ratio maps to a top-k through the shared width
policy (:func:`amoeba_core.shape.attention_width` / :func:`amoeba_core.shape.mlp_width`):
keep the best ``kv'`` groups, in each the best ``q'`` heads, and the best ``mlp'`` channels.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry, SubnetShape, attention_width, grid_key, mlp_width, normalize_width

log = logging.getLogger(__name__)

TOOL_VERSION = "0.1.0"


class LayerRanking(BaseModel):
    """Importance order of one decoder layer's width units (most important first)."""

    model_config = ConfigDict(frozen=True)

    groups: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]  # heads[g] = local query-head order inside KV group g
    channels: tuple[int, ...]

    @classmethod
    def identity(cls, geometry: ModelGeometry) -> LayerRanking:
        hpg = geometry.n_heads // geometry.n_kv_heads
        return cls(
            groups=tuple(range(geometry.n_kv_heads)),
            heads=tuple(tuple(range(hpg)) for _ in range(geometry.n_kv_heads)),
            channels=tuple(range(geometry.intermediate)),
        )


class LayerMeans(BaseModel):
    """Calibration means of the inputs of ``o_proj`` and ``down_proj`` (base64 float32), for
    FLAP bias compensation: a dropped unit is replaced by its mean instead of zero."""

    model_config = ConfigDict(frozen=True)

    attn: str
    mlp: str

    @staticmethod
    def encode(values: Any) -> str:
        import numpy as np

        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()

    @staticmethod
    def decode(text: str) -> list[float]:
        import numpy as np

        return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(float).tolist()


class Strategy(BaseModel):
    """Stage-1 selection for one model (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    model_fingerprint: str
    model_source: str
    geometry: dict[str, Any]
    metric: str = "calib-ppl"
    width_metric: str = "identity"
    calib_split: str = "calib"
    tool_version: str = TOOL_VERSION
    depth_layers: dict[int, tuple[int, ...]]
    rankings: tuple[LayerRanking, ...]
    widths: tuple[float, ...] = (1.0,)
    means: tuple[LayerMeans, ...] | None = None  # set when width uses bias compensation
    stats: dict[str, Any] = Field(default_factory=dict)
    # which text Stage 1 ran on and how much of it: amoeba_core.data.data_record() (data version,
    # text fingerprint) plus the calibration/validation budgets; empty in strategies made before
    data: dict[str, Any] = Field(default_factory=dict)

    # --- construction -----------------------------------------------------------
    @classmethod
    def trivial(cls, geometry: ModelGeometry, fingerprint: str, source: str, widths: tuple[float, ...] = (1.0,)) -> Strategy:
        """Drop-last-layers depths and identity rankings: a baseline and a placeholder."""
        n = geometry.n_layers
        return cls(
            model_fingerprint=fingerprint,
            model_source=source,
            geometry=geometry.to_dict(),
            metric="drop-last",
            depth_layers={d: tuple(range(d)) for d in range(1, n + 1)},
            rankings=tuple(LayerRanking.identity(geometry) for _ in range(n)),
            widths=widths,
        )

    def with_(self, **changes: Any) -> Strategy:
        return self.model_copy(update=changes)

    # --- geometry and shapes ----------------------------------------------------
    @property
    def model_geometry(self) -> ModelGeometry:
        return ModelGeometry(**self.geometry)

    @property
    def depths(self) -> list[int]:
        return sorted(self.depth_layers, reverse=True)

    def shape(self, depth: int, width: float, attn_width: float | None = None) -> SubnetShape:
        """The strategy's layers for ``depth`` at ``width`` (one ratio), or at MLP width ``width``
        and attention width ``attn_width`` (checked against the model's head/group structure)."""
        if depth not in self.depth_layers:
            raise AmoebaError(
                f"depth {depth} is not in the strategy (available: {min(self.depth_layers)}..{max(self.depth_layers)})"
            )
        if attn_width is not None:
            attn_width = self.model_geometry.check_width(attn_width, "attn")
        return SubnetShape(self.depth_layers[depth], normalize_width(width), attn_width)

    def shapes(self, widths: tuple[float, ...] | list[float] | None = None) -> list[SubnetShape]:
        return [self.shape(d, w) for d in self.depths for w in (widths or self.widths)]

    def resolve(self, text: str) -> SubnetShape:
        """A shape text (``d24-w0.75``) to the strategy's shape; the hash, when given, must match."""
        from amoeba_core.shape import parse_shape

        ref = parse_shape(text)
        shape = self.shape(ref.depth, ref.width, ref.attn_width)
        if ref.layer_hash and ref.layer_hash != shape.layer_hash:
            raise AmoebaError(f"shape {text!r} names other layers than this strategy keeps for depth {ref.depth}")
        return shape

    def check_shape(self, shape: SubnetShape) -> None:
        shape.check_fits(int(self.geometry["n_layers"]))

    # --- width ------------------------------------------------------------------
    def kept_groups(self, layer: int, width: float) -> list[int]:
        g = self.model_geometry
        att = attention_width(g.n_heads, g.n_kv_heads, width)
        return sorted(self.rankings[layer].groups[: att.n_kv_heads])

    def kept_heads(self, layer: int, width: float) -> list[int]:
        """Global query-head indices kept in ``layer`` at ``width`` (sorted; grouped by KV group)."""
        g = self.model_geometry
        hpg = g.n_heads // g.n_kv_heads
        att = attention_width(g.n_heads, g.n_kv_heads, width)
        r = self.rankings[layer]
        out: list[int] = []
        for grp in self.kept_groups(layer, width):
            out.extend(grp * hpg + h for h in sorted(r.heads[grp][: att.heads_per_group]))
        return out

    def kept_channels(self, layer: int, width: float) -> list[int]:
        g = self.model_geometry
        return sorted(self.rankings[layer].channels[: mlp_width(g.intermediate, width)])

    @property
    def bias_compensation(self) -> bool:
        return self.means is not None

    def unit_means(self, layer: int) -> tuple[list[float], list[float]] | None:
        """(o_proj input means, down_proj input means) of ``layer``, or None without compensation."""
        if self.means is None:
            return None
        m = self.means[layer]
        return LayerMeans.decode(m.attn), LayerMeans.decode(m.mlp)

    @property
    def width_id(self) -> str:
        """Hash of the rankings (and means): two strategies with the same id cut the same widths."""
        blob = json.dumps([r.model_dump(mode="json") for r in self.rankings], sort_keys=True)
        if self.means is not None:
            blob += json.dumps([m.model_dump() for m in self.means])
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    # --- persistence ------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write YAML atomically (temp file + rename)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = self.model_dump(mode="json")
        data["depth_layers"] = {int(k): list(v) for k, v in sorted(self.depth_layers.items(), reverse=True)}
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100000)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=p.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None) -> Strategy:
        p = Path(path)
        try:
            data = yaml.load(p.read_text(), Loader=_Loader)
        except OSError as e:
            raise AmoebaError(f"cannot read strategy {p}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise AmoebaError(f"strategy {p} is not valid YAML: {e}") from None
        try:
            s = cls.model_validate(data)
        except ValidationError as e:
            raise AmoebaError(f"strategy {p} is malformed: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
        if expect_fingerprint is not None and s.model_fingerprint != expect_fingerprint:
            raise AmoebaError(
                f"strategy {p} was made for model {s.model_fingerprint} ({s.model_source}), "
                f"but the loaded model is {expect_fingerprint}"
            )
        return s

    def summary(self) -> str:
        return (
            f"{self.model_source} ({self.model_fingerprint}): depths {min(self.depths)}..{max(self.depths)}, "
            f"widths {', '.join(grid_key(1, w)[3:] for w in self.widths)}, depth {self.metric}, width {self.width_metric}"
        )


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
