"""HF/GGUF export (llama.cpp parity when installed) and the select/eval/export commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amoeba.cli import main
from amoeba_core.errors import AmoebaError
from amoeba_core.export import export_subnet
from amoeba_core.model import LoadedModel
from amoeba_core.strategy import Strategy
from amoeba_core.subnet import extract_subnet
from tests._parity import assert_gguf_matches


def test_hf_and_gguf_export(tiny: LoadedModel, bias_strategy: Strategy, tmp_path: Path) -> None:
    import gguf
    from transformers import AutoModelForCausalLM

    shape = bias_strategy.shape(3, 0.75)
    ref = extract_subnet(tiny.model, shape, bias_strategy)
    ids = torch.tensor([[5, 70, 80, 90, 100, 33, 44]])
    hf = export_subnet(tiny, bias_strategy, shape, tmp_path / "hf", "hf")
    back = AutoModelForCausalLM.from_pretrained(hf)
    assert torch.allclose(back(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-6)
    path = export_subnet(tiny, bias_strategy, shape, tmp_path / "m.gguf", "gguf", gguf_dtype="f32")
    r = gguf.GGUFReader(str(path))
    g = tiny.geometry.scaled(shape)
    t = {x.name: tuple(int(s) for s in x.shape) for x in r.tensors}
    assert t["blk.0.attn_q.weight"] == (g.hidden, g.n_heads * g.head_dim)
    assert t["blk.0.attn_k.weight"] == (g.hidden, g.n_kv_heads * g.head_dim)
    assert t["blk.2.ffn_down.weight"] == (g.intermediate, g.hidden)
    assert "blk.3.attn_q.weight" not in t and r.fields["llama.block_count"].contents() == 3
    with pytest.raises(AmoebaError, match="exists"):
        export_subnet(tiny, bias_strategy, shape, path, "gguf")
    assert not list(tmp_path.glob(".*tmp*"))
    # f32 weights, but llama.cpp keeps its KV cache in f16: one f16 rounding of activations, no larger
    # than what rounding every weight to f16 does (measured in PyTorch); 4x that (tests/_parity.py)
    assert_gguf_matches(path, ref, ids, "f32 GGUF, f16 KV cache")


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code or 0)


def test_cli_select_eval_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s" / "strategy.yaml"
    argv = ["select", "--model", "tiny", "--min-depth", "2", "--widths", "1,0.75", "--out", str(out),
            "--calib-seq-len", "32", "--stats-windows", "2", "--val-windows", "1"]
    assert _run(argv) == 0
    s = Strategy.load(out)
    assert s.depths == [4, 3, 2] and s.stats["dp_evaluations"] == 5 and "total time" in capsys.readouterr().out
    assert _run(argv) == 0  # resumed: every DP shape comes from the cache
    assert Strategy.load(out).stats["dp_evaluations_from_cache"] == 5
    assert Strategy.load(out).data["window_choice"] == "spread"  # the default: spread over the split
    assert _run([*argv, "--calib-balance"]) == 0  # other calibration windows: new scores, recorded as balanced
    bal = Strategy.load(out)
    assert bal.data["window_choice"] == "balanced" and bal.stats["dp_evaluations_from_cache"] == 0
    assert _run(argv) == 0  # back to the spread windows: their scores are still cached
    assert Strategy.load(out).stats["dp_evaluations_from_cache"] == 5
    assert _run(["eval", "--strategy", str(out), "--shape", "d3-w0.75", "--windows", "2", "--seq-len", "32"]) == 0
    assert "ppl" in capsys.readouterr().out
    assert _run(["export", "--strategy", str(out), "--shape", "d2-w0.75", "--format", "hf", "--out",
                 str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    bad = [
        ["eval", "--strategy", str(out), "--shape", "d9-w0.75"],
        ["eval", "--strategy", str(out), "--shape", "deep"],
        ["export", "--strategy", str(out), "--shape", "d2-w1", "--format", "onnx", "--out", str(tmp_path / "x")],
        ["select", "--model", "tiny", "--min-depth", "0", "--out", str(tmp_path / "z.yaml")],
        ["select", "--model", "tiny", "--min-depth", "2", "--calib-windows", "1", "--calib-balance", "--out",
         str(tmp_path / "z.yaml")],
        ["select", "--model", "nosuchmodel", "--min-depth", "2", "--out", str(tmp_path / "z.yaml")],
    ]
    for argv in bad:
        assert _run(argv) == 2, argv
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: "), argv
    assert not (tmp_path / "x").exists() and not (tmp_path / "z.yaml").exists()


def test_cli_select_with_swaps_records_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s" / "strategy.yaml"
    argv = ["select", "--model", "tiny", "--min-depth", "2", "--widths", "1", "--out", str(out),
            "--calib-seq-len", "32", "--calib-windows", "2", "--stats-windows", "1", "--val-windows", "1",
            "--refine-depths", "3,2", "--confirm-windows", "4"]
    assert _run(argv) == 0
    s = Strategy.load(out)
    assert set(s.stats["swap_refinement"]) == {"3", "2"} and s.stats["swap_rule"] == "confirm"
    assert s.data["refine_depths"] == [3, 2] and s.data["swap_rule"] == "confirm" and s.data["confirm_windows"] == 4
    for d in (3, 2):  # the strategy's layers are the refined sets
        assert s.stats["swap_refinement"][str(d)]["removed"] == sorted(set(range(4)) - set(s.depth_layers[d]))
    assert "d3: drops" in capsys.readouterr().out
    z = tmp_path / "z.yaml"
    base = ["select", "--model", "tiny", "--min-depth", "2", "--out", str(z)]
    for bad in (["--refine-depths", "3,,2"], ["--refine-depths", "x"], ["--refine-depths", "1"],
                ["--refine-depths", "5"],
                ["--refine-depths", "3", "--confirm-windows", "0"]):
        assert _run([*base, *bad]) == 2, bad
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: "), bad
    assert not z.exists() and not any(tmp_path.glob(".z.cache-*"))


def test_corrupt_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    assert _run(["select", "--model", str(bad), "--min-depth", "2", "--out", str(tmp_path / "s.yaml")]) == 2
    assert "GGUF" in capsys.readouterr().err and not (tmp_path / "s.yaml").exists()
