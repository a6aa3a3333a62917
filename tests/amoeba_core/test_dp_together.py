"""The depth DP's candidates scored together (one batch per layer) equal the one-shape path."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from amoeba_core.depth import dp_depth, n_dp_evaluations
from amoeba_core.errors import AmoebaError
from amoeba_core.evaluate import DistillEvaluator, Evaluator, reference_score
from amoeba_core.model import LoadedModel, _finish, random_llama, tiny_tokenizer
from amoeba_core.select import select_strategy
from amoeba_core.shape import ModelGeometry, SubnetShape
from amoeba_core.subnet import masked_subnet


@pytest.fixture(scope="module")
def deep() -> LoadedModel:
    g = replace(ModelGeometry.preset("tiny"), n_layers=10, name="tiny10")
    return _finish(random_llama(g, "float32", seed=1), tiny_tokenizer(g.vocab), "tiny10")


def _ev(loaded: LoadedModel, cache: Path | None = None) -> Evaluator:
    ids = torch.randint(0, loaded.geometry.vocab, (3, 32), generator=torch.Generator().manual_seed(0))
    return Evaluator(loaded, None, split="calib", seq_len=32, batch_size=2, cache=cache, windows=ids)


def test_score_many_equals_score(deep: LoadedModel, tmp_path: Path) -> None:
    one, many = _ev(deep), _ev(deep, tmp_path / "s.jsonl")
    full = SubnetShape(tuple(range(10)))
    shapes = [  # a shared prefix 0..4 (memoised by the full model), different suffixes
        SubnetShape((0, 1, 2, 3, 4, 6, 7, 8, 9)),
        SubnetShape((0, 1, 2, 3, 4, 7, 9)),
        SubnetShape((0, 1, 2, 3, 4, 9)),
        SubnetShape((0, 1, 2, 3, 4, 6, 7, 9)),  # layers 6, 7 applied once for three shapes
        SubnetShape((0, 1, 2, 3, 4, 6, 8, 9)),
        SubnetShape((0, 2, 5, 9)),  # no memoised prefix beyond layer 0: starts from the embeddings
    ]
    for ev in (one, many):
        ev.score(full)
    a = [one.score(s) for s in shapes]
    b = many.score_many([*shapes, shapes[0]])  # a duplicate is scored once
    assert many.n_evaluated == 1 + len(shapes) and not any(x.cached for x in b)
    for x, y in zip(a, b):
        assert math.isclose(x.ppl, y.ppl, rel_tol=1e-5) and x.n_tokens == y.n_tokens
        assert x.top1_acc == y.top1_acc
    ppl, _ = reference_score(deep, shapes[1], None, many.ids)  # the model's own forward
    assert math.isclose(b[1].ppl, ppl, rel_tol=1e-4)
    again = _ev(deep, tmp_path / "s.jsonl").score_many(shapes)  # written to the cache: resumable
    assert all(x.cached for x in again) and [x.ppl for x in again] == [x.ppl for x in b[:-1]]


def test_dp_with_candidates_together_makes_the_same_picks(deep: LoadedModel) -> None:
    one, many = _ev(deep), _ev(deep)
    r1 = dp_depth(10, 4, metric=lambda s: one.score(s).ppl)
    r2 = dp_depth(10, 4, metric=lambda s: many.score(s).ppl,
                  metric_many=lambda ss: [x.ppl for x in many.score_many(ss)])
    assert r1.layers == r2.layers
    assert r1.n_evaluations == r2.n_evaluations == n_dp_evaluations(10, 4)
    for d in r1.scores:
        assert math.isclose(r1.scores[d], r2.scores[d], rel_tol=1e-5)


def test_kl_metric_is_the_divergence_from_the_full_models_distribution(deep: LoadedModel, tmp_path: Path) -> None:
    ids = torch.randint(0, deep.geometry.vocab, (3, 32), generator=torch.Generator().manual_seed(0))
    kl = DistillEvaluator(deep, None, split="calib", seq_len=32, batch_size=2, windows=ids,
                          cache=tmp_path / "kl.jsonl")
    full = SubnetShape(tuple(range(10)))
    assert kl.score(full).nll == pytest.approx(0.0, abs=1e-6) and kl.score(full).top1_acc == 1.0
    shapes = [SubnetShape((0, 1, 2, 3, 4, 6, 7, 8, 9)), SubnetShape((0, 1, 2, 3, 4, 9)), SubnetShape((0, 5, 9))]
    together = kl.score_many(shapes)
    # by hand: KL(p_full || p_shape) per predicted token through the model's own forward
    with torch.no_grad():
        logp = torch.log_softmax(deep.model(ids).logits[:, :-1].float(), -1)
        for s, got in zip(shapes, together):
            with masked_subnet(deep.model, s, None):
                logq = torch.log_softmax(deep.model(ids).logits[:, :-1].float(), -1)
            want = float((logp.exp() * (logp - logq)).sum(-1).mean())
            assert got.nll == pytest.approx(want, rel=1e-3) and got.nll > 0
    assert together[2].nll > together[0].nll  # 3 layers drift further than 9
    ppl = Evaluator(deep, None, split="calib", seq_len=32, batch_size=2, windows=ids, cache=tmp_path / "kl.jsonl")
    assert ppl.key(full) != kl.key(full)  # one cache file, never confused
    again = DistillEvaluator(deep, None, split="calib", seq_len=32, batch_size=2, windows=ids,
                             cache=tmp_path / "kl.jsonl").score(shapes[1])
    assert again.cached and again.nll == together[1].nll


def test_select_with_the_kl_metric_records_it(deep: LoadedModel) -> None:
    strategy = select_strategy(deep, 6, (1.0,), calib_seq_len=32, calib_windows=2, stats_windows=1, val_windows=1,
                               width_candidates=("flap",), depth_metric="kl")
    assert strategy.metric == "calib-kl" and "dp_calib_kl" in strategy.stats
    assert set(strategy.depth_layers) == set(range(6, 11)) and all(9 in v for v in strategy.depth_layers.values())
    with pytest.raises(AmoebaError, match="depth metric must be one of ppl, kl"):
        select_strategy(deep, 6, (1.0,), depth_metric="cosine")
