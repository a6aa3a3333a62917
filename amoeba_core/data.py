"""Text for calibration, validation, test and fine-tuning, from text that ships with Python.

No benchmark data set can be installed here, so the corpus is what every CPython carries, from
two *sources* (data version :data:`DATA_VERSION`):

* ``topics``: ``pydoc_data.topics`` (the CPython help topics: 79 documents, about 465 K
  characters of English technical prose about the language);
* ``stdlib``: the module documentation of a fixed list of standard-library modules
  (:data:`STDLIB_MODULES`), ``pydoc.render_doc(module, renderer=pydoc.plaintext)`` cleaned of
  what is not prose: the FILE/DATA/VERSION/AUTHOR sections, the class gutters, the inherited
  and data-attribute blocks and ``__special__`` methods pydoc repeats in every class (their
  docs are the same slot-wrapper sentences everywhere), and memory addresses in reprs
  (about 1.2 M characters on CPython 3.11). The text changes with the Python version that
  renders it; :func:`data_record` gives a fingerprint of the exact text used. Rendering runs in
  a fresh ``python -I -S`` process (other libraries patch the standard library when imported:
  torch replaces ``inspect.getfile``, transformers adds methods to ``logging.Logger``, which
  pydoc would then document) and is cached on disk (``$AMOEBA_CACHE``, a few MB).

Each source's documents are shuffled with a fixed seed and split *by document* into

* ``calib`` about 10 % of the characters (Stage 1 depth DP and width importance),
* ``val``   about 10 % (choice of the width metric; search accuracy),
* ``test``  about 15 % (reported numbers only),
* ``train`` the rest, about 65 % (Stage 2 fine-tuning).

A split is the ``topics`` part followed by the ``stdlib`` part, so the first windows of a
split are the same text as in data version 1 (topics only) and a small budget scores the same
tokens as before. ``"test-topics"`` / ``"test-stdlib"`` name one source's part of a split, so a
number can be checked on two held-out texts.

The documents quote each other (the topics repeat long passages under several names), so a
document that shares any 200-character passage with a kept document of *another* split is
dropped (topics first, in split order calib, val, test, train; then stdlib the same way): no
text is shared between splits. The topics' assignment is the same as in data version 1.

No multiple-choice set ships with Python or with the installed packages; the scorer in
:mod:`amoeba_core.evaluate` takes any MC items a user supplies and :mod:`amoeba_core.tasks`
runs lm-eval-harness tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amoeba_core._pydoc_text import STDLIB_MODULES, module_text  # noqa: F401 - part of this module's API
from amoeba_core.errors import AmoebaError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Bump when the corpus changes: sources, module list, cleaning or split rules.
DATA_VERSION = 2
SPLITS: dict[str, float] = {"calib": 0.10, "val": 0.10, "test": 0.15, "train": 0.65}
SOURCES: tuple[str, ...] = ("topics", "stdlib")

_RENDERER = Path(__file__).with_name("_pydoc_text.py")


def _stdlib_texts() -> dict[str, Any]:
    """:mod:`amoeba_core._pydoc_text` run as a script in a fresh ``python -I -S`` (standard library only, nothing patched),
    cached per Python build and version of this file."""
    from amoeba_core.cache import cached, release

    key = hashlib.sha1(sys.version.encode() + _RENDERER.read_bytes()).hexdigest()[:12]
    name = f"stdlib-docs-v{DATA_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}-{key}.json"

    def render(tmp: Path) -> None:
        r = subprocess.run([sys.executable, "-I", "-S", str(_RENDERER), str(tmp)], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            raise AmoebaError(f"rendering the standard library's documentation failed: {r.stderr.strip()[-500:]}")

    path = cached(name, render)
    try:
        return json.loads(path.read_text())
    finally:
        release(path)


@cache
def _source_documents(source: str) -> tuple[tuple[str, str], ...]:
    if source == "topics":
        from pydoc_data.topics import topics

        return tuple((f"topics:{k}", v.strip()) for k, v in sorted(topics.items()) if v.strip())
    if source == "stdlib":
        rendered = _stdlib_texts()
        for name, err in rendered["missing"].items():
            log.warning("stdlib text: cannot import %s (%s); left out", name, err)
        return tuple(sorted((f"stdlib:{k}", v) for k, v in rendered["docs"].items() if v))
    raise AmoebaError(f"unknown text source {source!r}; known: {', '.join(SOURCES)}")


def documents(source: str | None = None) -> list[tuple[str, str]]:
    """(document name, text) pairs of one source (``topics``, ``stdlib``) or of all, sorted by
    name within a source, empty documents dropped. Names are ``"<source>:<name>"``."""
    sources = SOURCES if source is None else (source,)
    return [d for s in sources for d in _source_documents(s)]


def split_names(seed: int = 0) -> dict[str, list[str]]:
    """Document names per split, topics first (a fresh copy of the cached assignment)."""
    return {k: list(v) for k, v in _split_names(seed).items()}


def _assign(docs: list[tuple[str, str]], seed: int) -> dict[str, list[str]]:
    """Shuffle ``docs``, then assign them in order until each split holds its fraction of the
    characters (documents differ a lot in length, so counting documents would not do)."""
    total = sum(len(t) for _, t in docs)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out: dict[str, list[str]] = {k: [] for k in SPLITS}
    bounds, acc = [], 0.0
    for split, frac in SPLITS.items():
        acc += frac
        bounds.append((split, acc * total))
    used, b = 0, 0
    for i in order:
        name, text = docs[i]
        while b < len(bounds) - 1 and (used >= bounds[b][1] or (out[bounds[b][0]] and used + len(text) / 2 > bounds[b][1])):
            b += 1
        out[bounds[b][0]].append(name)
        used += len(text)
    return out


@cache
def _split_names(seed: int) -> dict[str, list[str]]:
    """Document names per split (disjoint; the same for a given seed), per source then merged."""
    texts = dict(documents())
    groups = [(src, split, names) for src in SOURCES for split, names in _assign(documents(src), seed).items()]
    kept = _drop_shared(groups, texts)
    return {split: [n for src in SOURCES for n in kept[(src, split)]] for split in SPLITS}


def _all_pieces(text: str, passage: int) -> set[str]:
    return {text[i : i + passage] for i in range(0, max(1, len(text) - passage + 1))}


def _drop_shared(
    groups: list[tuple[str, str, list[str]]], texts: dict[str, str], passage: int = 200, stride: int = 50
) -> dict[tuple[str, str], list[str]]:
    """Walk ``(source, split, names)`` groups in order; drop each document that contains a
    ``passage``-character piece (one every ``stride`` characters) of a document kept earlier in
    another split. Sharing inside one split is allowed."""
    seen: dict[str, set[str]] = {split: set() for split in SPLITS}
    out: dict[tuple[str, str], list[str]] = {}
    for src, split, members in groups:
        other = set().union(*(v for k, v in seen.items() if k != split))
        kept = [n for n in members if other.isdisjoint(_all_pieces(texts[n], passage))]
        if len(kept) < len(members):
            log.info("split %s (%s): dropped %d documents sharing text with other splits", split, src,
                     len(members) - len(kept))
        out[(src, split)] = kept
        for n in kept:
            t = texts[n]
            seen[split].update(t[i : i + passage] for i in range(0, max(1, len(t) - passage), stride))
    return out


def text_splits(seed: int = 0) -> dict[str, list[str]]:
    """Document texts per split: ``calib``, ``val``, ``test``, ``train`` (disjoint by document)."""
    docs = dict(documents())
    return {split: [docs[n] for n in names] for split, names in split_names(seed).items()}


def split_choices() -> list[str]:
    """Every split name :func:`split_docs` accepts: ``calib`` ... and ``test-topics``, ``test-stdlib`` ..."""
    return [*SPLITS, *(f"{s}-{src}" for s in SPLITS for src in SOURCES)]


def check_split(split: str) -> str:
    if split not in split_choices():
        raise AmoebaError(f"unknown data split {split!r}; known: {', '.join(split_choices())}")
    return split


def split_docs(split: str, seed: int = 0) -> list[str]:
    """Texts of a split (``test``) or of one source's part of it (``test-stdlib``)."""
    check_split(split)
    name, _, source = split.partition("-")
    docs = dict(documents())
    return [docs[n] for n in split_names(seed)[name] if not source or n.startswith(f"{source}:")]


def window_docs(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], seq_len: int, max_windows: int | None = None
) -> tuple[torch.LongTensor, list[int]]:
    """:func:`token_windows` and, per window, the index in ``docs`` of the document its first
    token comes from (the unit an interval resamples, see :mod:`amoeba_core.evaluate`)."""
    import torch

    if seq_len < 2:
        raise AmoebaError(f"seq_len must be >= 2, got {seq_len}")
    ids: list[int] = []
    starts: list[int] = []  # token offset where each document starts
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    need = None if max_windows is None else max_windows * seq_len
    for doc in docs:
        starts.append(len(ids))
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.extend(sep)
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise AmoebaError(f"not enough text for one window of {seq_len} tokens ({len(ids)} tokens)")
    owner, d = [], 0
    for w in range(n):
        while d + 1 < len(starts) and starts[d + 1] <= w * seq_len:
            d += 1
        owner.append(d)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len), owner


def spread_windows(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], seq_len: int, n: int
) -> tuple[torch.LongTensor, list[int]]:
    """``n`` windows picked evenly over *all* windows of ``docs`` (first and last included), with
    each window's document (as :func:`window_docs`): a budget of windows then samples every part
    of a split and many documents, instead of the first few documents."""
    if n < 1:
        raise AmoebaError(f"need at least one window, got {n}")
    every, owner = window_docs(tokenizer, docs, seq_len)
    total = int(every.shape[0])
    n = min(n, total)
    pick = sorted({round(k * (total - 1) / max(1, n - 1)) for k in range(n)}) if n > 1 else [0]
    return every[pick], [owner[i] for i in pick]


def source_shares(n: int) -> list[int]:
    """Windows per source (in :data:`SOURCES` order) when ``n`` are shared equally, the remainder to
    the first sources; at least one each."""
    if n < len(SOURCES):
        raise AmoebaError(f"balanced windows need at least one window per source ({len(SOURCES)}), got {n}")
    return [n // len(SOURCES) + (1 if i < n % len(SOURCES) else 0) for i in range(len(SOURCES))]


def balanced_windows(
    tokenizer: PreTrainedTokenizerBase, split: str, seq_len: int, n: int, seed: int = 0
) -> tuple[torch.LongTensor, list[int]]:
    """``n`` windows of a whole split (``calib``), an equal share from each source's part (the
    remainder to the first sources), each share spread over its part as :func:`spread_windows`
    does; with each window's document index (numbered over the split's parts in order).

    A spread over the whole split samples the sources in proportion to their text: the
    calibration split is about 31% pydoc topics and 69% standard-library docs, so a selection
    calibrated that way sees mostly one kind of text. Equal shares weigh both kinds alike."""
    import torch

    name, _, source = check_split(split).partition("-")
    if source:
        raise AmoebaError(f"balanced windows need a whole split (e.g. {name!r}), got the source part {split!r}")
    parts, owners, offset = [], [], 0
    for src, k in zip(SOURCES, source_shares(n)):
        docs = split_docs(f"{name}-{src}", seed)
        ids, owner = spread_windows(tokenizer, docs, seq_len, k)
        parts.append(ids)
        owners.extend(o + offset for o in owner)
        offset += len(docs)
    return torch.cat(parts), owners


def token_windows(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], seq_len: int, max_windows: int | None = None
) -> torch.LongTensor:
    """Non-overlapping windows of ``seq_len`` tokens, shape ``[n, seq_len]``.

    Documents are tokenised, joined with the EOS token (when the tokenizer has one) and cut
    into consecutive windows (stride = ``seq_len``, so every token is scored once); the
    ragged tail is dropped. The first ``max_windows`` windows are returned.
    """
    return window_docs(tokenizer, docs, seq_len, max_windows)[0]


def token_counts(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> dict[str, dict[str, int]]:
    """Documents, characters and tokens per split and per source part (for reports)."""
    out: dict[str, dict[str, int]] = {}
    for split in split_choices():
        docs = split_docs(split, seed)
        n_tok = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
        out[split] = {"documents": len(docs), "characters": sum(map(len, docs)), "tokens": n_tok}
    return out


def data_record(seed: int = 0, **budget: Any) -> dict[str, Any]:
    """What text a result was computed on: data version, Python version, a fingerprint of the
    split texts, plus any budget (windows, seq_len) the caller passes; recorded in strategies
    and benchmark results."""
    h = hashlib.sha1()
    for split, texts in text_splits(seed).items():
        h.update(split.encode())
        for t in texts:
            h.update(hashlib.sha1(t.encode()).digest())
    return {"data_version": DATA_VERSION, "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "data_seed": seed, "data_fingerprint": h.hexdigest()[:12], **budget}
