"""Accuracy intervals: per-window data, document resampling, paired comparisons, old cache lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from amoeba_core.errors import AmoebaError
from amoeba_core.evaluate import MIN_DOC_UNITS, Evaluator, ShapeScore, compare
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy

FULL = SubnetShape((0, 1, 2, 3))


def test_score_carries_intervals_and_units(tiny: LoadedModel, strategy: Strategy) -> None:
    ev = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=12)
    s = ev.score(SubnetShape((0, 1, 3), 0.75))
    assert s.ppl_lo <= s.ppl <= s.ppl_hi and s.top1_lo <= s.top1_acc <= s.top1_hi
    assert s.ppl_lo < s.ppl_hi  # 12 windows: a real interval
    assert len(s.unit_nll) == len(s.unit_tokens) == len(s.unit_doc) == 12 and sum(s.unit_tokens) == s.n_tokens
    assert math.isclose(sum(s.unit_nll) / s.n_tokens, s.nll, rel_tol=1e-12)
    assert sum(s.unit_correct) / s.n_tokens == s.top1_acc
    assert s.ci_unit == ("document" if len(set(s.unit_doc)) >= MIN_DOC_UNITS else "window")
    assert "[" in s.fmt() and s.ppl_ci.contains(s.ppl)


def test_document_units_group_windows() -> None:
    docs = [d for d in range(10) for _ in range(3)]  # 10 documents x 3 windows
    s = ShapeScore.from_units("x", "test", [float(i) for i in range(30)], [1] * 30, [31] * 30, 0.0, docs)
    unit, nll, right, tok = s.units()
    assert unit == "document" and s.n_units == 10 and nll[0] == 0 + 1 + 2 and tok == [93.0] * 10
    few = ShapeScore.from_units("x", "test", [1.0] * 6, [1] * 6, [31] * 6, 0.0, [0, 0, 0, 1, 1, 1])
    assert few.ci_unit == "window" and few.n_units == 6


def test_paired_comparison(tiny: LoadedModel, strategy: Strategy) -> None:
    ev = Evaluator(tiny, strategy, split="test", seq_len=32, max_windows=40)
    full, shallow = ev.score(FULL), ev.score(SubnetShape((0,), 0.5))
    same = compare(full, ev.score(FULL))
    assert same.diff.value == 0 and not same.significant and same.verdict() == "not significant"
    d = compare(shallow, full, "nll")
    assert d.a == shallow.nll and d.b == full.nll and d.diff.lo <= d.diff.value <= d.diff.hi
    # the paired interval is never wider than the difference of two independent intervals allows
    assert d.diff.hi - d.diff.lo <= 2 * ((shallow.ppl_hi - shallow.ppl_lo) + (full.ppl_hi - full.ppl_lo))
    t = compare(full, shallow, "top1")
    assert math.isclose(t.diff.value, full.top1_acc - shallow.top1_acc)
    other = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=40).score(FULL)
    with pytest.raises(AmoebaError, match="same windows"):
        compare(full, other)
    with pytest.raises(AmoebaError, match="unknown metric"):
        compare(full, full, "bleu")


def test_paired_difference_detects_a_real_gap() -> None:
    """Shape B loses 0.05 nats on every window; per-window noise is far larger, but shared."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.normal(100.0, 20.0, 60)
    a = ShapeScore.from_units("a", "test", base, [10] * 60, [31] * 60, 0.0)
    b = ShapeScore.from_units("b", "test", base + 31 * 0.05, [10] * 60, [31] * 60, 0.0)
    assert a.ppl_hi > b.ppl_lo  # the two separate intervals overlap ...
    d = compare(a, b)
    assert d.significant and d.verdict(names=("a", "b")) == "a better"  # ... the paired one does not


def test_old_cache_lines_are_read_and_recomputed(tiny: LoadedModel, strategy: Strategy, tmp_path: Path) -> None:
    cache = tmp_path / "scores.jsonl"
    ev = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=2, cache=cache)
    shape = SubnetShape((0, 2, 3), 0.5)
    old_key = ev.key(shape).rsplit("|", 1)[0]  # the key format before window hashes
    old = {"key": old_key, "shape_key": shape.key, "split": "val", "ppl": 1.0, "top1_acc": 0.0, "nll": 0.0,
           "n_tokens": 62, "seconds": 0.1, "cached": False}
    cache.write_text(json.dumps(old) + "\n")
    ev = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=2, cache=cache)
    s = ev.score(shape)
    assert not s.cached and s.ppl != 1.0 and s.ppl_lo is not None and ev.n_evaluated == 1
    legacy = ShapeScore.from_json({k: v for k, v in old.items() if k != "key"})
    assert legacy.ppl_ci is None and "no interval" in legacy.fmt()
    with pytest.raises(AmoebaError, match="per-window"):
        compare(legacy, s)
    again = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=2, cache=cache).score(shape)
    assert again.cached and again.unit_nll == s.unit_nll and isinstance(again.unit_nll, tuple)


def test_mc_accuracy_interval(tiny: LoadedModel) -> None:
    from amoeba_core.evaluate import MCItem, mc_accuracy

    items = [MCItem("import", (" os", " qq"), i % 2) for i in range(6)]
    r = mc_accuracy(tiny, items)
    assert r["acc_lo"] <= r["acc"] <= r["acc_hi"] and r["n"] == 6.0


def test_cli_eval_prints_intervals_and_pairs(tiny: LoadedModel, strategy: Strategy, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from amoeba.cli import main

    spath = strategy.save(tmp_path / "s.yaml")
    out = tmp_path / "e.json"
    argv = ["eval", "--strategy", str(spath), "--shape", "d4-w1", "--shape", "d2-w0.5", "--split", "val-stdlib",
            "--seq-len", "32", "--windows", "10", "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert not e.value.code
    printed = capsys.readouterr().out
    assert "90% interval over 10 windows" in printed and "(paired, 90%)" in printed
    r = json.loads(out.read_text())
    assert r["split"] == "val-stdlib" and r["data"]["data_version"] >= 2 and len(r["scores"]) == 2
    lo, hi = r["scores"][0]["ppl_ci90"]
    assert lo <= r["scores"][0]["ppl"] <= hi
    assert {p["metric"] for p in r["paired"]} == {"ppl", "top1"}
    with pytest.raises(SystemExit) as e:
        main(["eval", "--strategy", str(spath), "--shape", "d4-w1", "--split", "test-wiki"])
    assert e.value.code == 2 and "unknown data split" in capsys.readouterr().err
