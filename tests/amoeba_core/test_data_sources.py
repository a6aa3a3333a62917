"""Held-out text from two sources (pydoc topics + standard-library module docs), data record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from amoeba_core.data import (
    DATA_VERSION, SOURCES, SPLITS, check_split, data_record, module_text, split_docs, split_names, token_windows,
    window_docs,
)
from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel


def test_split_is_topics_then_stdlib() -> None:
    names = split_names(0)
    for split in SPLITS:
        srcs = [n.split(":", 1)[0] for n in names[split]]
        assert set(srcs) == set(SOURCES) and srcs == sorted(srcs, key=SOURCES.index), split
        whole = split_docs(split)
        assert whole == split_docs(f"{split}-topics") + split_docs(f"{split}-stdlib")
    # the held-out splits grew: test and val hold far more than the topics alone
    test_chars = sum(map(len, split_docs("test")))
    assert test_chars > 2 * sum(map(len, split_docs("test-topics"))) and test_chars > 150_000
    assert sum(map(len, split_docs("val"))) > 80_000


def test_bad_split_names() -> None:
    for bad in ("tst", "test-wiki", "test-", ""):
        with pytest.raises(AmoebaError, match="unknown data split"):
            split_docs(bad)
    assert check_split("val-stdlib") == "val-stdlib"


def test_module_text_is_prose_and_portable() -> None:
    t = module_text("csv")
    assert t.startswith("csv - ") and "Functions" in t and "reader(" in t
    assert "FILE" not in t and "site-packages" not in t and "python3" not in t  # no machine paths
    assert "|  " not in t and "inherited from" not in t and "__weakref__" not in t
    assert " at 0x" not in module_text("functools")


def test_rendering_does_not_depend_on_what_was_imported_before(tmp_path: Path) -> None:
    """torch patches inspect.getfile and transformers adds Logger methods; pydoc would document
    both if it ran in this process. The text comes from a clean interpreter, so a process that
    imported them (this one) and one that did not get the same fingerprint."""
    import torch  # noqa: F401 - the point: these are imported here
    import transformers  # noqa: F401

    env = {**os.environ, "AMOEBA_CACHE": str(tmp_path / "a")}
    code = "from amoeba_core.data import data_record; print(data_record()['data_fingerprint'])"
    clean = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert clean.strip() == data_record()["data_fingerprint"]
    assert list((tmp_path / "a").glob("stdlib-docs-*.json"))  # cached for the next process


def test_window_docs_owner(tiny: LoadedModel) -> None:
    docs = ["a" * 50, "b" * 10, "c" * 200, "d" * 90]
    ids, owner = window_docs(tiny.tokenizer, docs, 32)
    assert ids.shape[0] == len(owner) == (51 + 11 + 201 + 91) // 32
    flat = ids.flatten().tolist()
    for w, d in enumerate(owner):  # each window's first token comes from the document named
        first = tiny.tokenizer.decode([flat[w * 32]])
        assert first in (docs[d][0], tiny.tokenizer.eos_token), (w, d, first)
    assert owner == sorted(owner) and owner[0] == 0
    assert (token_windows(tiny.tokenizer, docs, 32, 3) == ids[:3]).all()


def test_data_record() -> None:
    r = data_record(calib_windows=4, seq_len=256)
    assert r["data_version"] == DATA_VERSION and r["calib_windows"] == 4 and len(r["data_fingerprint"]) == 12
    assert data_record()["data_fingerprint"] == r["data_fingerprint"]
    assert data_record(seed=1)["data_fingerprint"] != r["data_fingerprint"]


@pytest.mark.slow
def test_smollm2_token_budget() -> None:
    """The issue's floor: at least 32K test and 16K val tokens with the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer

    from amoeba_core.data import token_counts
    from amoeba_core.model import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except AmoebaError as e:
        pytest.skip(str(e))
    counts = token_counts(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    assert counts["test"]["tokens"] >= 32_000 and counts["val"]["tokens"] >= 16_000
    assert counts["test-stdlib"]["tokens"] + counts["test-topics"]["tokens"] == counts["test"]["tokens"]


def test_spread_windows_sample_the_whole_split(tiny: LoadedModel, strategy) -> None:  # noqa: ANN001
    from amoeba_core.data import spread_windows
    from amoeba_core.evaluate import Evaluator

    docs = split_docs("val")
    every, owner = window_docs(tiny.tokenizer, docs, 32)
    ids, own = spread_windows(tiny.tokenizer, docs, 32, 12)
    assert (ids[0] == every[0]).all() and (ids[-1] == every[-1]).all() and len(own) == 12
    assert own[0] == 0 and own[-1] == owner[-1] and len(set(own)) >= 8  # many documents, not the first few
    ev = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=12, spread=True)
    assert (ev.ids == ids).all() and ev.score(strategy.shape(3, 0.75)).ci_unit == "document"
    first = Evaluator(tiny, strategy, split="val", seq_len=32, max_windows=12)
    assert (first.ids == every[:12]).all() and first.windows_id != ev.windows_id


def test_balanced_windows_take_half_from_each_source(tiny: LoadedModel, strategy) -> None:  # noqa: ANN001
    from amoeba_core.data import balanced_windows, spread_windows
    from amoeba_core.evaluate import Evaluator

    ids, own = balanced_windows(tiny.tokenizer, "calib", 32, 7)
    topics, t_own = spread_windows(tiny.tokenizer, split_docs("calib-topics"), 32, 4)
    stdlib, s_own = spread_windows(tiny.tokenizer, split_docs("calib-stdlib"), 32, 3)
    assert ids.shape == (7, 32) and (ids[:4] == topics).all() and (ids[4:] == stdlib).all()
    n_topics = len(split_docs("calib-topics"))  # document numbers run over the whole split
    assert own == t_own + [o + n_topics for o in s_own] and max(t_own) < n_topics <= min(own[4:])
    # a plain spread gives the sources their share of the text, not half each
    spread, _ = spread_windows(tiny.tokenizer, split_docs("calib"), 32, 7)
    assert not (spread == ids).all()
    ev = Evaluator(tiny, strategy, split="calib", seq_len=32, max_windows=7, spread=True, balance=True)
    assert (ev.ids == ids).all() and ev.window_doc == tuple(own)
    with pytest.raises(AmoebaError, match="whole split"):
        balanced_windows(tiny.tokenizer, "calib-topics", 32, 4)
    with pytest.raises(AmoebaError, match="at least one window per source"):
        balanced_windows(tiny.tokenizer, "calib", 32, 1)
