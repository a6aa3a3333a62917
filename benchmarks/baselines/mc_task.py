"""A local multiple-choice task for lm-eval-harness, built from the held-out *test* split.

Nothing can be downloaded here, so the peer comparison's task is written from shipped text: each
item is a passage of a test-split document and ``choices`` candidate continuations of the same
length, one of which is the passage's own next characters and the others the text at the same
place in other test documents. A model that has kept more of its knowledge of the text's
subjects (Python's documentation and standard library) picks the coherent continuation more
often. Items come round-robin from every document, so no document dominates; the choices are
shuffled with a fixed seed. It is scored by lm-eval's ``multiple_choice`` log-likelihood
(``acc``: arg-max summed log-probability of the continuation's tokens), through
:mod:`amoeba_core.tasks`, exactly as ``amoeba eval --task`` runs it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK = "amoeba_test_continuation"


def _spans(text: str, ctx: int, cont: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs at word boundaries, one per ``ctx + cont`` characters."""
    words = " ".join(text.split())
    out, i = [], 0
    while i + ctx + cont <= len(words):
        j = words.find(" ", i + ctx)  # the continuation starts at a word
        if j < 0 or j + cont > len(words):
            break
        out.append((words[i:j], words[j:j + cont]))
        i = j + cont
    return out


def build_items(texts: list[str], n_items: int, choices: int = 4, ctx: int = 240, cont: int = 60,
                seed: int = 0) -> list[dict]:
    """Up to ``n_items`` items: round-robin over documents; distractors from other documents."""
    if choices < 2:
        raise ValueError("a multiple-choice item needs at least 2 choices")
    per_doc = [_spans(t, ctx, cont) for t in texts]
    docs = [i for i, s in enumerate(per_doc) if s]
    if len(docs) < choices:
        raise ValueError(f"{len(docs)} documents long enough for a passage; {choices} choices need {choices}")
    rng = random.Random(seed)
    items: list[dict] = []
    for k in range(max(len(s) for s in per_doc)):
        for d in docs:
            if len(items) >= n_items:
                return items
            if k >= len(per_doc[d]):
                continue
            context, right = per_doc[d][k]
            others = rng.sample([o for o in docs if o != d], choices - 1)
            wrong = [per_doc[o][min(k, len(per_doc[o]) - 1)][1] for o in others]
            answer = rng.randrange(choices)
            opts = wrong[:answer] + [right] + wrong[answer:]
            items.append({"doc": d, "context": context, "choices": opts, "answer": answer})
    return items


def write_task(folder: Path, texts: list[str], n_items: int = 200, seed: int = 0) -> tuple[Path, int]:
    """Write the task's YAML and JSONL into ``folder`` (an lm-eval ``include_path``); returns (folder, items)."""
    items = build_items(texts, n_items, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {folder / 'items.jsonl'}\n"
        f"  cache_dir: {folder / 'hf-datasets-cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder, len(items)
