from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import (
    ModelGeometry,
    SubnetShape,
    attention_width,
    mlp_width,
    parse_shape,
    parse_widths,
)


def test_shape_key_is_stable_and_sorted() -> None:
    a = SubnetShape((3, 1, 2), 0.75)
    b = SubnetShape((1, 2, 3), 0.7500001)
    assert a == b and hash(a) == hash(b)
    assert a.key == b.key and a.key.startswith("d3-w0.750-")
    assert a.grid_key == "d3-w0.750"
    assert SubnetShape((0, 1, 4), 0.75).key != a.key  # same depth/width, other layers


@pytest.mark.parametrize("bad", ["", "d24", "w0.75", "d24-w1.5", "d24-w0", "d0-w0.5", "d24-w-0.5", "x24-w0.5"])
def test_parse_shape_rejects_malformed(bad: str) -> None:
    with pytest.raises(AmoebaError):
        parse_shape(bad)


def test_parse_shape_roundtrip() -> None:
    s = SubnetShape.first(24, 0.75)
    ref = parse_shape(s.key)
    assert (ref.depth, ref.width, ref.layer_hash) == (24, 0.75, s.layer_hash)
    assert parse_shape("d24-w0.75").layer_hash is None
    assert parse_widths("1, 0.875,0.75") == (1.0, 0.875, 0.75)


def test_smollm2_width_policy_keeps_gqa_consistent() -> None:
    g = ModelGeometry.preset("smollm2-135m")
    for w, heads, mlp in [(1.0, 9, 1536), (0.875, 9, 1344), (0.75, 6, 1152), (0.625, 6, 960)]:
        s = g.scaled_dims(24, w)
        assert (s.n_heads, s.n_kv_heads, s.intermediate, s.n_layers) == (heads, 3, mlp, 24)
        assert s.hidden == g.hidden and s.head_dim == 64


def test_mha_width_drops_whole_heads() -> None:
    g = ModelGeometry.preset("llama2-7b")
    s = g.scaled_dims(32, 0.75)
    assert s.n_heads == s.n_kv_heads == 24 and s.head_dim == 128
    assert s.intermediate % 32 == 0


@given(
    kv=st.integers(1, 8), hpg=st.integers(1, 8), width=st.floats(0.05, 1.0), inter=st.integers(32, 20000)
)
def test_width_policy_invariants(kv: int, hpg: int, width: float, inter: int) -> None:
    a = attention_width(kv * hpg, kv, width)
    assert 1 <= a.n_kv_heads <= kv and 1 <= a.heads_per_group <= hpg
    # no other legal (kv', q') combination is strictly closer to the requested head count
    target = round(width, 3) * kv * hpg
    best = min(abs(k * q - target) for k in range(1, kv + 1) for q in range(1, hpg + 1))
    assert abs(a.n_heads - target) == pytest.approx(best)
    m = mlp_width(inter, width)
    assert m == inter if round(width, 3) == 1.0 else (m % 32 == 0 and m >= 32)


def test_geometry_from_hf_config_roundtrip(tmp_path) -> None:
    from amoeba_core.model import llama_config

    g = ModelGeometry.preset("smollm2-135m")
    (tmp_path / "config.json").write_text(json.dumps(llama_config(g).to_dict()))
    back = ModelGeometry.from_hf_config(tmp_path)
    assert back == g  # names differ, sizes equal


def test_bad_geometry_and_scaling_errors() -> None:
    with pytest.raises(AmoebaError, match="unknown model"):
        ModelGeometry.resolve("no-such-model")
    g = ModelGeometry.preset("tiny")
    with pytest.raises(AmoebaError, match="depth"):
        g.scaled_dims(g.n_layers + 1, 1.0)
    with pytest.raises(AmoebaError, match="keeps layer"):
        g.scaled(SubnetShape((0, g.n_layers), 1.0))
    with pytest.raises(AmoebaError):
        ModelGeometry(n_layers=2, hidden=64, n_heads=4, n_kv_heads=3, intermediate=64, vocab=10)


def test_random_llama_matches_geometry_param_count() -> None:
    from amoeba_core.model import random_llama

    g = ModelGeometry.preset("tiny")
    for shape in (SubnetShape.first(4, 1.0), SubnetShape.first(2, 0.5)):
        sg = g.scaled(shape)
        m = random_llama(sg)
        assert sum(p.numel() for p in m.parameters()) == sg.n_params()


def test_separate_widths_text_parse_hash_and_order() -> None:
    s = SubnetShape.first(24, 0.75, 0.667)
    assert s.grid_key == "d24-a0.667-m0.750" and s.key.startswith("d24-a0.667-m0.750-")
    assert (s.axes.attn, s.axes.mlp, s.separate, s.narrowed) == (0.667, 0.75, True, True)
    ref = parse_shape(s.key)
    assert (ref.depth, ref.attn_width, ref.width, ref.layer_hash) == (24, 0.667, 0.75, s.layer_hash)
    assert parse_shape("d24-a0.6667-m0.75").grid_key == "d24-a0.667-m0.750"
    one = SubnetShape.first(24, 0.75)
    assert parse_shape(one.key).attn_width is None and one.axes == (0.75, 0.75) and not one.separate
    assert s != one and hash(s) != hash(one) and len({s, one, SubnetShape.first(24, 0.75, 0.667)}) == 2
    assert not SubnetShape.first(24, 1.0, 1.0).narrowed and SubnetShape.first(24, 1.0, 0.667).narrowed
    # total order mixes both forms (one-ratio first at equal layers and MLP width)
    assert sorted([s, SubnetShape.first(24, 0.5), one]) == [SubnetShape.first(24, 0.5), one, s]
    for bad in ("d24-a0.667", "d24-m0.75", "d24-a0-m0.5", "d24-a0.5-m1.5", "d24-w0.5-m0.5", "d24-a0.5-w0.5"):
        with pytest.raises(AmoebaError):
            parse_shape(bad)


def test_attention_widths_follow_the_group_structure() -> None:
    g = ModelGeometry.preset("smollm2-135m")
    assert g.attn_widths() == (1.0, 0.667, 0.444, 0.333, 0.222, 0.111)  # 9, 6, 4, 3, 2, 1 heads
    assert g.attn_widths_all_groups() == (1.0, 0.667, 0.333)
    for a, heads, kv in [(1.0, 9, 3), (0.667, 6, 3), (0.444, 4, 2), (0.333, 3, 3)]:
        s = g.scaled_dims(24, 0.75, a)
        assert (s.n_heads, s.n_kv_heads, s.intermediate) == (heads, kv, 1152)
    # the old signature still means today's policy; d24-w0.75 is physically d24-a0.667-m0.75
    old, new = g.scaled_dims(24, 0.75), g.scaled(SubnetShape.first(24, 0.75, 0.667))
    assert (old.n_heads, old.n_kv_heads, old.intermediate) == (new.n_heads, new.n_kv_heads, new.intermediate)
    assert old.n_params() == new.n_params() and new.name.endswith("d24-a0.667-m0.750")
    # MLP-only cut: all heads, fewer channels -> between full and w0.75 in parameters
    mlp_only = g.scaled(SubnetShape.first(24, 0.75, 1.0))
    assert old.n_params() < mlp_only.n_params() < g.scaled_dims(24, 1.0).n_params()
    assert mlp_only.layer_params() - old.layer_params() == 2 * 576 * 3 * 64  # q and o of 3 heads
    for bad in (0.75, 0.5, 0.9):
        with pytest.raises(AmoebaError, match="allowed: 1.000, 0.667"):
            g.scaled_dims(24, 0.75, bad)
    with pytest.raises(AmoebaError, match="allowed"):
        g.check_shape(SubnetShape.first(24, 1.0, 0.5))
    mha = ModelGeometry.preset("llama2-7b")
    assert mha.attn_widths_all_groups() == mha.attn_widths() and len(mha.attn_widths()) == 32
    assert mha.scaled_dims(32, 1.0, 0.75).n_heads == 24
