"""Each peer baseline selects what its criterion says (tiny random LLaMA, real forward passes), and
Torch-Pruning's pruned model runs through the tool's evaluator."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from amoeba_core.depth import block_influence  # noqa: E402
from amoeba_core.evaluate import Evaluator  # noqa: E402
from amoeba_core.model import LoadedModel, load_model  # noqa: E402
from amoeba_core.shape import SubnetShape  # noqa: E402
from benchmarks import baselines as bl  # noqa: E402

CALIB = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny")


def test_shortgpt_keeps_the_layers_of_highest_block_influence(tiny: LoadedModel) -> None:
    bi, keep = bl.shortgpt_layers(tiny, CALIB, [1, 2, 3])
    assert bi == pytest.approx(block_influence(tiny, CALIB))
    order = sorted(range(4), key=lambda i: bi[i])  # lowest influence first
    for d, layers in keep.items():
        assert set(layers) == set(range(4)) - set(order[: 4 - d])


def test_shortened_llama_drops_the_blocks_whose_removal_hurts_least(tiny: LoadedModel, tmp_path: Path) -> None:
    ev = Evaluator(tiny, None, split="calib", seq_len=32, max_windows=2, spread=True, cache=tmp_path / "c.jsonl")
    ppl, keep = bl.shortened_ppl_layers(ev, 4, [2, 3])
    for i in range(4):  # each entry is the perplexity with that block alone removed
        assert ppl[i] == pytest.approx(ev.score(SubnetShape(tuple(j for j in range(4) if j != i), 1.0)).ppl)
    worst_removal = max(range(4), key=lambda i: ppl[i])
    assert worst_removal in keep[3] and len(keep[3]) == 3
    assert set(keep[2]) == set(sorted(range(4), key=lambda i: ppl[i])[2:])


def test_flap_keeps_the_highest_fluctuation_units_at_one_ratio(tiny: LoadedModel) -> None:
    from amoeba_core.width import collect_stats, rankings

    st = bl.flap_strategy(tiny, CALIB, (1.0, 0.5))
    assert st.width_metric == "flap"
    assert st.rankings == rankings(tiny, collect_stats(tiny, CALIB), "flap")
    shape = st.shape(4, 0.5)
    assert shape.depth == 4 and shape.width == 0.5 and shape.axes[0] == shape.axes[1]  # one ratio everywhere


def test_torch_pruning_prunes_mlp_channels_and_runs_in_the_evaluator(tiny: LoadedModel, tmp_path: Path) -> None:
    pruned = bl.torch_pruning_model(tiny, 0.5)
    g = tiny.geometry
    for layer in pruned.model.model.layers:
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features
        assert layer.mlp.gate_proj.out_features == g.intermediate // 2
        assert layer.self_attn.k_proj.out_features == g.n_kv_heads * g.head_dim  # attention untouched
    assert bl.mlp_keep(tiny, pruned) == 0.5
    assert tiny.model.model.layers[0].mlp.gate_proj.out_features == g.intermediate  # the original is left as it was
    sc = Evaluator(pruned, None, split="test", seq_len=32, max_windows=2, spread=True,
                   cache=tmp_path / "tp.jsonl").score(SubnetShape(tuple(range(4)), 1.0))
    assert math.isfinite(sc.ppl) and sc.ppl > 1


def test_per_shape_lora_trains_each_kind_of_peer_shape_and_scores_it(tiny: LoadedModel, tmp_path: Path) -> None:
    """Depth-only layers and a Torch-Pruning model become trainable targets; the LoRA changes their scores."""
    from benchmarks.baselines import lora as bl_lora

    budget = bl_lora.LoraBudget(steps=2, seq_len=32, rank=4, lr=5e-3)
    pruned = bl.torch_pruning_model(tiny, 0.5)
    for name, (base, strat, shape) in {
        "depth": bl_lora.target(tiny, None, SubnetShape((0, 3), 1.0)),
        "tp": bl_lora.target(tiny, None, SubnetShape(tuple(range(4)), 1.0), model=pruned),
    }.items():
        assert shape.layers == ((0, 3) if name == "depth" else (0, 1, 2, 3))
        before = Evaluator(base, strat, split="test", seq_len=32, max_windows=2, spread=True,
                           cache=tmp_path / f"b-{name}.jsonl").score(shape)
        tuned, rec = bl_lora.train_per_shape(base, strat, shape, budget, tmp_path / name)
        assert rec["steps"] == 2 and rec["tokens"] == 64
        after = Evaluator(tuned, strat, split="test", seq_len=32, max_windows=2, spread=True,
                          cache=tmp_path / f"a-{name}.jsonl").score(shape)
        assert math.isfinite(after.ppl) and after.ppl != before.ppl
        again, _ = bl_lora.train_per_shape(base, strat, shape, budget, tmp_path / name)  # done: loaded, not retrained
        assert len((tmp_path / name / "train_log.jsonl").read_text().splitlines()) == 2
        del tuned, again


def test_mc_task_items_are_each_documents_own_continuation_among_other_documents_text() -> None:
    from benchmarks.baselines.mc_task import build_items

    texts = [f"doc{i} " + " ".join(f"w{i}x{j}" for j in range(200)) for i in range(6)]
    items = build_items(texts, 30, choices=4, ctx=60, cont=20)
    assert len(items) == 30
    assert [it["doc"] for it in items[:6]] == list(range(6))  # round-robin over documents
    for it in items:
        words = " ".join(texts[it["doc"]].split())
        right = it["choices"][it["answer"]]
        assert (it["context"] + right) in words  # the passage's own next characters
        assert len(set(it["choices"])) == 4
        for k, c in enumerate(it["choices"]):
            if k != it["answer"]:  # distractors come from other documents
                assert f"w{it['doc']}x" not in c
    assert len({it["answer"] for it in items}) > 1
    with pytest.raises(ValueError, match="documents long enough"):
        build_items(texts[:3], 5, choices=4, ctx=60, cont=20)
