from __future__ import annotations

import random

import pytest

from amoeba_core.model import LoadedModel, load_model
from amoeba_core.strategy import LayerRanking, Strategy


@pytest.fixture()
def loaded() -> LoadedModel:
    return load_model("tiny")


@pytest.fixture()
def strategy(loaded: LoadedModel) -> Strategy:
    """Non-prefix depths and shuffled width rankings, so slicing errors would show."""
    g = loaded.geometry
    rng = random.Random(1)
    hpg = g.n_heads // g.n_kv_heads
    ranks = []
    for _ in range(g.n_layers):
        groups = list(range(g.n_kv_heads))
        rng.shuffle(groups)
        heads = []
        for _ in groups:
            h = list(range(hpg))
            rng.shuffle(h)
            heads.append(tuple(h))
        ch = list(range(g.intermediate))
        rng.shuffle(ch)
        ranks.append(LayerRanking(groups=tuple(groups), heads=tuple(heads), channels=tuple(ch)))
    base = Strategy.trivial(g, loaded.fingerprint, loaded.source, widths=(1.0, 0.75, 0.5))
    depth_layers = {4: (0, 1, 2, 3), 3: (0, 1, 3), 2: (0, 3)}
    return base.with_(depth_layers=depth_layers, rankings=tuple(ranks), metric="test")
