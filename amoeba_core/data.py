"""Text for calibration, validation, test and fine-tuning, from text that ships with Python.

No benchmark data set can be installed here, so the corpus is ``pydoc_data.topics`` (the
CPython help topics: 79 documents, about 465 K characters of English technical prose). The
documents are shuffled with a fixed seed and split *by document*. The topics quote each other
(long passages repeated under several names, one document twice), so a document that shares
any 200-character passage with a document of an earlier split (order: calib, val, test,
train) is dropped from its split: no text is shared between splits.

* ``calib`` about 10 % of the characters (Stage 1 depth DP and width importance),
* ``val``   about 10 % (choice of the width metric; search accuracy),
* ``test``  about 15 % (reported numbers only),
* ``train`` the rest, about 65 % (Stage 2 fine-tuning).

No multiple-choice set ships with Python or with the installed packages; the scorer in
:mod:`amoeba_core.evaluate` takes any MC items a user supplies.
"""

from __future__ import annotations

import logging
import random
from functools import cache
from typing import TYPE_CHECKING

from amoeba_core.errors import AmoebaError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SPLITS: dict[str, float] = {"calib": 0.10, "val": 0.10, "test": 0.15, "train": 0.65}


def documents() -> list[tuple[str, str]]:
    """(topic name, text) pairs, sorted by name, empty documents dropped."""
    from pydoc_data.topics import topics

    return [(k, v.strip()) for k, v in sorted(topics.items()) if v.strip()]


def split_names(seed: int = 0) -> dict[str, list[str]]:
    """Document names per split (a fresh copy of the cached assignment)."""
    return {k: list(v) for k, v in _split_names(seed).items()}


@cache
def _split_names(seed: int) -> dict[str, list[str]]:
    """Document names per split (disjoint; the same for a given seed).

    Documents are shuffled, then assigned in order until each split holds its fraction of
    the characters (documents differ a lot in length, so counting documents would not do).
    """
    docs = documents()
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
    return _drop_shared(out, dict(docs))


def _all_pieces(text: str, passage: int) -> set[str]:
    return {text[i : i + passage] for i in range(0, max(1, len(text) - passage + 1))}


def _drop_shared(
    names: dict[str, list[str]], texts: dict[str, str], passage: int = 200, stride: int = 97
) -> dict[str, list[str]]:
    """Drop each document that contains a ``passage``-character piece (one every ``stride``
    characters) of a document kept in an earlier split."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for split, members in names.items():
        kept = [n for n in members if seen.isdisjoint(_all_pieces(texts[n], passage))]
        if len(kept) < len(members):
            log.info("split %s: dropped %d documents sharing text with earlier splits", split, len(members) - len(kept))
        out[split] = kept
        for n in kept:
            t = texts[n]
            seen.update(t[i : i + passage] for i in range(0, max(1, len(t) - passage), stride))
    return out


def text_splits(seed: int = 0) -> dict[str, list[str]]:
    """Document texts per split: ``calib``, ``val``, ``test``, ``train`` (disjoint by document)."""
    docs = dict(documents())
    return {split: [docs[n] for n in names] for split, names in split_names(seed).items()}


def split_docs(split: str, seed: int = 0) -> list[str]:
    splits = text_splits(seed)
    if split not in splits:
        raise AmoebaError(f"unknown data split {split!r}; known: {', '.join(splits)}")
    return splits[split]


def token_windows(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], seq_len: int, max_windows: int | None = None
) -> torch.LongTensor:
    """Non-overlapping windows of ``seq_len`` tokens, shape ``[n, seq_len]``.

    Documents are tokenised, joined with the EOS token (when the tokenizer has one) and cut
    into consecutive windows (stride = ``seq_len``, so every token is scored once); the
    ragged tail is dropped. The first ``max_windows`` windows are returned.
    """
    import torch

    if seq_len < 2:
        raise AmoebaError(f"seq_len must be >= 2, got {seq_len}")
    ids: list[int] = []
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    need = None if max_windows is None else max_windows * seq_len
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.extend(sep)
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise AmoebaError(f"not enough text for one window of {seq_len} tokens ({len(ids)} tokens)")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def token_counts(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> dict[str, dict[str, int]]:
    """Documents, characters and tokens per split (for reports)."""
    out: dict[str, dict[str, int]] = {}
    for split, docs in text_splits(seed).items():
        n_tok = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
        out[split] = {"documents": len(docs), "characters": sum(map(len, docs)), "tokens": n_tok}
    return out
