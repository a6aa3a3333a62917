"""Accuracy of a shape: windowed perplexity and next-token top-1 accuracy, cached per shape.

Perplexity protocol: the split's documents are tokenised, joined with EOS and cut into
non-overlapping windows of ``seq_len`` tokens (stride = ``seq_len``; every token after the
first of its window is predicted exactly once with up to ``seq_len - 1`` tokens of
context). ``ppl = exp(mean NLL)`` over all predicted tokens; ``top1_acc`` is the fraction of
those tokens whose arg-max prediction is right.

Speed: shapes are run layer by layer on the full model's modules (widths masked, see
:mod:`amoeba_core.subnet`). Hidden states after the *unchanged prefix* (layers
``0..k-1`` all kept at the same width) are memoised, so shapes that share a prefix (the
depth DP, or a search over shapes) only run their differing suffix. Scores are cached on
disk keyed by (model fingerprint, shape key, width rankings, split, seq_len, windows), so
the same shape is never evaluated twice.

``mc_accuracy`` scores multiple-choice items by log-likelihood in the style of
lm-eval-harness (``acc`` and length-normalised ``acc_norm``). No MC data set ships with
Python or the installed packages, so none is bundled; pass your own items.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from amoeba_core.data import split_docs, token_windows
from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy
from amoeba_core.subnet import masked_subnet, width_hooks

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShapeScore:
    """Accuracy of one shape on one split."""

    shape_key: str
    split: str
    ppl: float
    top1_acc: float
    nll: float
    n_tokens: int
    seconds: float
    cached: bool = False


class Evaluator:
    """Scores shapes of one loaded model on one split (see the module docstring).

    ``cache`` is a JSON-lines file; every new score is appended, so a killed run loses
    at most the shape it was computing. ``memo_mb`` bounds the memoised prefix states.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        strategy: Strategy | None = None,
        split: str = "val",
        seq_len: int = 256,
        max_windows: int | None = 8,
        cache: Path | str | None = None,
        seed: int = 0,
        memo_mb: int = 1024,
        batch_size: int = 4,
        windows: torch.LongTensor | None = None,
    ) -> None:
        import torch

        if strategy is not None and strategy.model_fingerprint != loaded.fingerprint:
            raise AmoebaError(
                f"strategy is for model {strategy.model_fingerprint}, the loaded model is {loaded.fingerprint}"
            )
        self.loaded = loaded
        self.strategy = strategy
        self.split = split
        self.seq_len = seq_len
        self.ids = windows if windows is not None else token_windows(loaded.tokenizer, split_docs(split, seed), seq_len, max_windows)
        self.n_windows = int(self.ids.shape[0])
        self.batch_size = batch_size
        self.n_evaluated = 0
        self.eval_seconds = 0.0
        self._memo: OrderedDict[tuple[float, int], list[torch.Tensor]] = OrderedDict()
        self._memo_bytes = 0
        self._memo_cap = memo_mb * 2**20
        self._scores: dict[str, ShapeScore] = {}
        self.cache = Path(cache) if cache is not None else None
        if self.cache is not None and self.cache.is_file():
            for line in self.cache.read_text().splitlines():
                try:
                    row = json.loads(line)
                    key = row.pop("key")
                    self._scores[key] = ShapeScore(**row)
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue  # a torn last line from a killed run
        n_layers = len(loaded.model.model.layers)
        self._mask = None
        with torch.no_grad():
            model = loaded.model.model
            pos = torch.arange(seq_len).unsqueeze(0)
            self._pos = pos
            dummy = torch.zeros(1, seq_len, model.config.hidden_size, dtype=next(model.parameters()).dtype)
            self._pe = model.rotary_emb(dummy, position_ids=pos)
        self._n_layers = n_layers

    # --- public ---------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return self.n_windows * (self.seq_len - 1)

    def key(self, shape: SubnetShape) -> str:
        wid = self.strategy.width_id if (shape.width < 1.0 and self.strategy is not None) else "-"
        return f"{self.loaded.score_id}|{shape.key}|{wid}|{self.split}|{self.seq_len}|{self.n_windows}"

    def score(self, shape: SubnetShape) -> ShapeScore:
        """Score ``shape`` (from the cache when it was scored before)."""
        shape.check_fits(self._n_layers)
        if shape.width < 1.0 and self.strategy is None:
            raise AmoebaError(f"shape {shape.grid_key} narrows the width: the evaluator needs a strategy")
        k = self.key(shape)
        if k in self._scores:
            return _replace_cached(self._scores[k])
        t0 = time.perf_counter()
        nll_sum, correct, n = self._run(shape)
        sec = time.perf_counter() - t0
        nll = nll_sum / n
        s = ShapeScore(shape.key, self.split, math.exp(min(nll, 700.0)), correct / n, nll, n, sec)
        self._scores[k] = s
        self.n_evaluated += 1
        self.eval_seconds += sec
        if self.cache is not None:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            with self.cache.open("a") as f:
                f.write(json.dumps({"key": k, **asdict(s)}) + "\n")
        return s

    def score_many(self, shapes: list[SubnetShape]) -> list[ShapeScore]:
        return [self.score(s) for s in shapes]

    # --- engine -----------------------------------------------------------------------
    def _prefix(self, shape: SubnetShape) -> int:
        """Length k of the unchanged prefix: shape keeps layers 0..k-1."""
        k = 0
        for i, layer in enumerate(shape.layers):
            if layer != i:
                break
            k = i + 1
        return k

    def _run(self, shape: SubnetShape) -> tuple[float, int, int]:
        from amoeba_core.smol import set_shape

        set_shape(self.loaded.model, shape)  # routes Stage 2 adapters, if installed
        try:
            return self._run_layers(shape)
        finally:
            set_shape(self.loaded.model, None)

    def _run_layers(self, shape: SubnetShape) -> tuple[float, int, int]:
        import torch

        model = self.loaded.model
        inner = model.model
        k_max = self._prefix(shape)
        w = shape.width
        start = 0
        for k in range(k_max, 0, -1):
            if (w, k) in self._memo:
                start = k
                self._memo.move_to_end((w, k))
                break
        with torch.no_grad(), width_hooks(model, w, self.strategy, list(shape.layers)):
            if start:
                states = self._memo[(w, start)]
            else:
                states = [inner.embed_tokens(b) for b in self.ids.split(self.batch_size)]
            nll_sum, correct, n = 0.0, 0, 0
            hs = list(states)
            for j, layer_idx in enumerate(shape.layers[start:]):
                layer = inner.layers[layer_idx]
                hs = [self._layer(layer, h) for h in hs]
                if start + j + 1 <= k_max:
                    self._remember((w, start + j + 1), hs)
            for b, h in zip(self.ids.split(self.batch_size), hs):
                s, c, m = self._head(h, b)
                nll_sum, correct, n = nll_sum + s, correct + c, n + m
        return nll_sum, correct, n

    def _layer(self, layer: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        cos, sin = self._pe
        out = layer(h, attention_mask=None, position_ids=self._pos, position_embeddings=(cos, sin))
        return out[0] if isinstance(out, tuple) else out

    def _head(self, h: torch.Tensor, ids: torch.Tensor) -> tuple[float, int, int]:
        import torch.nn.functional as F

        model = self.loaded.model
        logits = model.lm_head(model.model.norm(h))[:, :-1].float()
        target = ids[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
        correct = int((logits.argmax(-1) == target).sum())
        return float(nll), correct, int(target.numel())

    def _remember(self, key: tuple[float, int], hs: list[torch.Tensor]) -> None:
        if key in self._memo:
            return
        size = sum(t.numel() * t.element_size() for t in hs)
        if size > self._memo_cap:
            return
        while self._memo and self._memo_bytes + size > self._memo_cap:
            _, old = self._memo.popitem(last=False)
            self._memo_bytes -= sum(t.numel() * t.element_size() for t in old)
        self._memo[key] = hs
        self._memo_bytes += size


def _replace_cached(s: ShapeScore) -> ShapeScore:
    from dataclasses import replace

    return replace(s, cached=True)


def reference_score(loaded: LoadedModel, shape: SubnetShape, strategy: Strategy | None, ids: torch.LongTensor) -> tuple[float, float]:
    """(ppl, top1) of ``shape`` through the model's own forward (masked subnet); for tests."""
    import torch
    import torch.nn.functional as F

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
    """
    import torch
    import torch.nn.functional as F

    if not items:
        raise AmoebaError("no multiple-choice items given")
    tok = loaded.tokenizer
    shape = shape or SubnetShape(tuple(range(len(loaded.model.model.layers))), 1.0)
    acc = acc_norm = 0
    with torch.no_grad(), masked_subnet(loaded.model, shape, strategy) as m:
        for it in items:
            ctx = tok(it.context, add_special_tokens=False)["input_ids"]
            lls, norms = [], []
            for choice in it.choices:
                cont = tok(choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([ctx + cont])
                logp = F.log_softmax(m(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
                tgt = ids[0, 1:]
                ll = float(logp[len(ctx) - 1 :].gather(-1, tgt[len(ctx) - 1 :, None]).sum())
                lls.append(ll)
                norms.append(ll / max(1, len(choice)))
            acc += int(max(range(len(lls)), key=lls.__getitem__) == it.answer)
            acc_norm += int(max(range(len(norms)), key=norms.__getitem__) == it.answer)
    return {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "n": float(len(items))}
