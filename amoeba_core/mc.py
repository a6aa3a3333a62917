"""Scoring through the model's own forward: :func:`reference_score` (masked subnet perplexity, for
tests) and :func:`mc_accuracy` (multiple-choice log-likelihood, see :mod:`amoeba_core.evaluate`,
which re-exports these names)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.stats import mean_ci
from amoeba_core.strategy import Strategy
from amoeba_core.subnet import masked_subnet

if TYPE_CHECKING:
    import torch


def reference_score(loaded: LoadedModel, shape: SubnetShape, strategy: Strategy | None, ids: torch.LongTensor) -> tuple[float, float]:
    """(ppl, top1) of ``shape`` through the model's own forward (masked subnet); for tests."""
    import torch
    import torch.nn.functional as F

    ids = ids.to(next(loaded.model.parameters()).device)
    with torch.no_grad(), masked_subnet(loaded.model, shape, strategy) as m:
        logits = m(input_ids=ids, use_cache=False).logits[:, :-1].float()
    target = ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return math.exp(float(nll)), float((logits.argmax(-1) == target).float().mean())


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: a context and candidate continuations."""

    context: str
    choices: tuple[str, ...]
    answer: int


def mc_accuracy(
    loaded: LoadedModel, items: list[MCItem], shape: SubnetShape | None = None, strategy: Strategy | None = None
) -> dict[str, float]:
    """lm-eval-harness-style log-likelihood MC scoring: ``acc`` and ``acc_norm`` (per character).

    For each choice the summed log-probability of its tokens given the context is computed;
    the prediction is the arg-max (``acc``) or the arg-max of log-prob / characters (``acc_norm``).
    ``acc_lo``/``acc_hi`` and ``acc_norm_lo``/``acc_norm_hi``: 90% bootstrap interval over items.
    """
    import torch
    import torch.nn.functional as F

    if not items:
        raise AmoebaError("no multiple-choice items given")
    tok = loaded.tokenizer
    shape = shape or SubnetShape(tuple(range(len(loaded.model.model.layers))), 1.0)
    acc: list[int] = []
    acc_norm: list[int] = []
    with torch.no_grad(), masked_subnet(loaded.model, shape, strategy) as m:
        for it in items:
            ctx = tok(it.context, add_special_tokens=False)["input_ids"]
            lls, norms = [], []
            for choice in it.choices:
                cont = tok(choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([ctx + cont], device=next(m.parameters()).device)
                logp = F.log_softmax(m(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
                tgt = ids[0, 1:]
                ll = float(logp[len(ctx) - 1 :].gather(-1, tgt[len(ctx) - 1 :, None]).sum())
                lls.append(ll)
                norms.append(ll / max(1, len(choice)))
            acc.append(int(max(range(len(lls)), key=lls.__getitem__) == it.answer))
            acc_norm.append(int(max(range(len(norms)), key=norms.__getitem__) == it.answer))
    a, an = mean_ci(acc), mean_ci(acc_norm)
    return {"acc": a.value, "acc_lo": a.lo, "acc_hi": a.hi, "acc_norm": an.value, "acc_norm_lo": an.lo,
            "acc_norm_hi": an.hi, "n": float(len(items))}
