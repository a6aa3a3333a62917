"""Held-out text from two sources (pydoc topics + standard-library module docs), data record."""

from __future__ import annotations

import subprocess
import sys

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


def test_rendering_does_not_depend_on_what_was_imported_before() -> None:
    code = ("import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; "
            "from amoeba_core.data import module_text; import hashlib; "
            "print(hashlib.sha1(''.join(module_text(m) for m in ('json', 'logging', 'email.message')).encode()).hexdigest())")
    a = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    b = subprocess.run([sys.executable, "-c", code, "logging.handlers", "json.tool", "email.mime.text"],
                       capture_output=True, text=True, check=True).stdout
    assert a == b and len(a.strip()) == 40


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
