"""Shared fixtures: the tiny random LLaMA and strategies with shuffled rankings."""

from __future__ import annotations

import random

import pytest

from amoeba_core.model import LoadedModel, load_model
from amoeba_core.strategy import LayerMeans, LayerRanking, Strategy


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("tiny")


def shuffled_strategy(loaded: LoadedModel, seed: int = 0, bias: bool = False) -> Strategy:
    g = loaded.geometry
    rng = random.Random(seed)
    hpg = g.n_heads // g.n_kv_heads

    def perm(n: int) -> tuple[int, ...]:
        x = list(range(n))
        rng.shuffle(x)
        return tuple(x)

    ranks = tuple(
        LayerRanking(groups=perm(g.n_kv_heads), heads=tuple(perm(hpg) for _ in range(g.n_kv_heads)),
                     channels=perm(g.intermediate))
        for _ in range(g.n_layers)
    )
    means = None
    if bias:
        means = tuple(
            LayerMeans(attn=LayerMeans.encode([rng.uniform(-1, 1) for _ in range(g.n_heads * g.head_dim)]),
                       mlp=LayerMeans.encode([rng.uniform(-1, 1) for _ in range(g.intermediate)]))
            for _ in range(g.n_layers)
        )
    base = Strategy.trivial(g, loaded.fingerprint, loaded.source, (1.0, 0.75, 0.5))
    return base.with_(rankings=ranks, means=means, width_metric="shuffled" + ("-bias" if bias else ""))


@pytest.fixture(scope="session")
def strategy(tiny: LoadedModel) -> Strategy:
    return shuffled_strategy(tiny, 0, bias=False)


@pytest.fixture(scope="session")
def bias_strategy(tiny: LoadedModel) -> Strategy:
    return shuffled_strategy(tiny, 1, bias=True)
