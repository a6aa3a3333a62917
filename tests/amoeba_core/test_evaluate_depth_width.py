"""Evaluator (reference equality, disk cache, prefix memo), depth DP, width metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from amoeba_core.depth import block_influence, block_influence_layers, dp_depth, n_dp_evaluations
from amoeba_core.errors import AmoebaError
from amoeba_core.evaluate import Evaluator, MCItem, mc_accuracy, reference_score
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy
from amoeba_core.width import apply_metric, choose_width_metric, collect_stats


def test_score_equals_model_forward(tiny: LoadedModel, bias_strategy: Strategy) -> None:
    ev = Evaluator(tiny, bias_strategy, split="val", seq_len=32, max_windows=3, batch_size=2)
    for shape in (SubnetShape((0, 1, 2, 3)), SubnetShape((0, 1, 3), 0.75), SubnetShape((0, 1, 2), 0.5)):
        s = ev.score(shape)
        ppl, top1 = reference_score(tiny, shape, bias_strategy, ev.ids)
        assert math.isclose(s.ppl, ppl, rel_tol=1e-4) and math.isclose(s.top1_acc, top1, abs_tol=1e-6)
        assert s.n_tokens == 3 * 31


def test_disk_cache_never_twice(tiny: LoadedModel, strategy: Strategy, tmp_path: Path) -> None:
    cache = tmp_path / "scores.jsonl"
    ev = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=2, cache=cache)
    a = ev.score(SubnetShape((0, 2, 3), 0.5))
    assert ev.score(SubnetShape((0, 2, 3), 0.5)).cached and ev.n_evaluated == 1
    with cache.open("a") as f:
        f.write('{"key": "torn')  # a killed run's last line
    ev2 = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=2, cache=cache)
    b = ev2.score(SubnetShape((0, 2, 3), 0.5))
    assert b.cached and ev2.n_evaluated == 0 and b.ppl == a.ppl
    # another split or ranking is another key
    assert not Evaluator(tiny, strategy, split="test", seq_len=32, max_windows=2, cache=cache).score(
        SubnetShape((0, 2, 3), 0.5)).cached
    with pytest.raises(AmoebaError, match="strategy"):
        Evaluator(tiny, None, split="val", seq_len=32, max_windows=2).score(SubnetShape((0, 1), 0.5))


def test_prefix_memo_same_result(tiny: LoadedModel) -> None:
    memo = Evaluator(tiny, None, split="calib", seq_len=32, max_windows=2)
    memo.score(SubnetShape((0, 1, 2, 3)))  # fills the prefix states
    none = Evaluator(tiny, None, split="calib", seq_len=32, max_windows=2, memo_mb=0)
    for layers in ((0, 1, 3), (0, 2, 3), (0, 1, 2)):
        assert math.isclose(memo.score(SubnetShape(layers)).nll, none.score(SubnetShape(layers)).nll, rel_tol=1e-6)


def test_dp_is_exact_for_additive_cost() -> None:
    cost = [5.0, 0.3, 0.1, 2.0, 0.2, 0.9, 0.05, 4.0]
    calls: list[SubnetShape] = []

    def metric(shape: SubnetShape) -> float:
        calls.append(shape)
        return sum(c for i, c in enumerate(cost) if i not in shape.layers)

    r = dp_depth(8, 3, metric)
    assert r.n_evaluations == n_dp_evaluations(8, 3) == len(calls) - 1
    for d, layers in r.layers.items():
        assert 7 in layers and len(layers) == d
        removed = sorted(set(range(8)) - set(layers))
        assert removed == sorted(sorted(range(7), key=cost.__getitem__)[: 8 - d])


def test_dp_resumes_from_cache(tiny: LoadedModel, tmp_path: Path) -> None:
    def run() -> tuple[dict[int, tuple[int, ...]], int]:
        ev = Evaluator(tiny, None, split="calib", seq_len=32, max_windows=1, cache=tmp_path / "dp.jsonl")
        r = dp_depth(4, 1, lambda s: ev.score(s).ppl)
        return r.layers, ev.n_evaluated

    first, n1 = run()
    second, n2 = run()
    assert first == second and n1 == n_dp_evaluations(4, 1) + 1 and n2 == 0


def test_block_influence(tiny: LoadedModel) -> None:
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    bi = block_influence(tiny, ids)
    assert len(bi) == 4 and all(-1e-6 <= b <= 2 for b in bi)
    layers = block_influence_layers(bi, [2])[2]
    assert len(layers) == 2 and set(layers) == set(sorted(range(4), key=lambda i: -bi[i])[:2])


def test_width_metrics(tiny: LoadedModel, strategy: Strategy) -> None:
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(2))
    stats = collect_stats(tiny, ids)
    for metric in ("flap", "flap-bias", "wanda", "magnitude"):
        s = apply_metric(strategy, tiny, stats, metric)
        for r in s.rankings:
            assert sorted(r.channels) == list(range(tiny.geometry.intermediate))
            assert sorted(r.groups) == list(range(tiny.geometry.n_kv_heads))
        assert s.bias_compensation == (metric == "flap-bias")
    seen: list[str] = []

    def score(s: Strategy, w: float) -> float:
        seen.append(s.width_metric)
        return {"flap": 3.0, "wanda": 2.0}[s.width_metric] * (2 - w)

    chosen, report = choose_width_metric(tiny, strategy, stats, score, ("flap", "wanda"))
    assert chosen.width_metric == "wanda" and set(report) == {"flap", "wanda"} and len(seen) == 4


def test_mc_accuracy(tiny: LoadedModel) -> None:
    items = [MCItem("def f(x): return", (" x", " zz"), 0), MCItem("import", (" os", " qq"), 1)]
    r = mc_accuracy(tiny, items)
    swapped = [MCItem(i.context, i.choices[::-1], 1 - i.answer) for i in items]
    assert r == mc_accuracy(tiny, swapped) and 0.0 <= r["acc"] <= 1.0
    with pytest.raises(AmoebaError):
        mc_accuracy(tiny, [])
