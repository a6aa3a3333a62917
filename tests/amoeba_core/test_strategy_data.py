"""Strategy YAML round trip and errors; data splits."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from amoeba_core.data import STDLIB_MODULES, split_names, text_splits, token_windows
from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.shape import attention_width, mlp_width
from amoeba_core.strategy import Strategy


def test_round_trip_and_fingerprint(tiny: LoadedModel, bias_strategy: Strategy, tmp_path: Path) -> None:
    p = bias_strategy.save(tmp_path / "s.yaml")
    assert Strategy.load(p, expect_fingerprint=tiny.fingerprint) == bias_strategy
    assert Strategy.load(p).width_id == bias_strategy.width_id
    with pytest.raises(AmoebaError, match="made for model"):
        Strategy.load(p, expect_fingerprint="0000")
    assert not list(tmp_path.glob(".tmp-*"))


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("model_fingerprint: [unclosed")
    with pytest.raises(AmoebaError, match="YAML"):
        Strategy.load(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("model_fingerprint: x\n")
    with pytest.raises(AmoebaError, match="malformed"):
        Strategy.load(tmp_path / "b.yaml")
    with pytest.raises(AmoebaError, match="cannot read"):
        Strategy.load(tmp_path / "missing.yaml")


def test_shapes_and_widths(tiny: LoadedModel, strategy: Strategy) -> None:
    g = tiny.geometry
    assert strategy.depths == [4, 3, 2, 1]
    assert strategy.resolve("d3-w0.75") == strategy.shape(3, 0.75)
    with pytest.raises(AmoebaError, match="not in the strategy"):
        strategy.shape(9, 1.0)
    for w in (1.0, 0.9, 0.75, 0.6, 0.5, 0.3):
        att = attention_width(g.n_heads, g.n_kv_heads, w)
        for layer in range(g.n_layers):
            heads = strategy.kept_heads(layer, w)
            assert len(heads) == att.n_heads and len(strategy.kept_channels(layer, w)) == mlp_width(g.intermediate, w)
            hpg = g.n_heads // g.n_kv_heads
            groups = strategy.kept_groups(layer, w)
            assert [h // hpg for h in heads] == sorted(itertools.chain(*[[grp] * att.heads_per_group for grp in groups]))


def test_splits_disjoint_and_fixed() -> None:
    a, b = split_names(0), split_names(0)
    assert a == b and set(a) == {"calib", "val", "test", "train"}
    names = list(itertools.chain(*a.values()))
    assert len(names) == len(set(names)) <= 79 + len(STDLIB_MODULES)
    assert split_names(1) != a
    texts = text_splits(0)
    total = sum(len(t) for v in texts.values() for t in v)
    assert 0.05 < sum(map(len, texts["test"])) / total < 0.25
    assert sum(map(len, texts["train"])) / total > 0.5


def test_splits_share_no_passage() -> None:
    """pydoc topics quote each other: no 200-character passage may appear in two splits."""
    texts = text_splits(0)
    for a, b in itertools.combinations(texts, 2):
        pieces = {d[i : i + 200] for d in texts[a] for i in range(0, max(1, len(d) - 200), 50)}
        assert not any(p in d for p in pieces for d in texts[b]), (a, b)


def test_token_windows(tiny: LoadedModel) -> None:
    ids = token_windows(tiny.tokenizer, text_splits()["val"], 64, 5)
    assert tuple(ids.shape) == (5, 64)
    with pytest.raises(AmoebaError):
        token_windows(tiny.tokenizer, ["ab"], 64, 1)
