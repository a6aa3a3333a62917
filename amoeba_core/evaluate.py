"""Accuracy of a shape: windowed perplexity and next-token top-1 accuracy, cached per shape.

Perplexity protocol: the split's documents are tokenised, joined with EOS and cut into
non-overlapping windows of ``seq_len`` tokens (stride = ``seq_len``; every token after the
first of its window is predicted exactly once with up to ``seq_len - 1`` tokens of
context). ``ppl = exp(mean NLL)`` over all predicted tokens; ``top1_acc`` is the fraction of
those tokens whose arg-max prediction is right.

Intervals: every score keeps, per window, its NLL sum, right tokens and token count, and the
document its first token comes from. ``ppl`` and ``top1_acc`` carry a 90% bootstrap interval
(:func:`amoeba_core.stats.grouped_mean_ci`) that resamples *documents* (a window's tokens, and
a document's windows, move together) when the windows come from at least
:data:`MIN_DOC_UNITS` documents, otherwise windows (``ci_unit`` says which; windows of one
document are then treated as independent, which makes the interval somewhat too narrow).
:func:`compare` gives the paired-difference interval of two shapes scored on the same windows
and says "not significant" when it contains 0.

Speed: shapes are run layer by layer on the full model's modules (widths masked, see
:mod:`amoeba_core.subnet`). Hidden states after the *unchanged prefix* (layers
``0..k-1`` all kept at the same width) are memoised, so shapes that share a prefix (the
depth DP, or a search over shapes) only run their differing suffix; ``score_many`` runs the
suffixes of full-width shapes together, one batch per layer (the DP's candidates of a step: 1.73x
less CPU than one shape at a time for SmolLM2, ``benchmarks/select_speed.py``). Scores are cached on
disk keyed by (model fingerprint, shape key, width rankings, split, seq_len, windows, a hash
of the windows' tokens), so the same shape is never evaluated twice. Under torchrun ``score_many``
deals its shapes over the ranks (:mod:`amoeba_core.distributed`).

:class:`ShapeScore`, :func:`compare`, :func:`windows_id` (:mod:`amoeba_core.scores`) and
``reference_score``/``mc_accuracy`` (:mod:`amoeba_core.mc`: lm-eval-style log-likelihood multiple
choice; no MC data set ships with Python, so none is bundled) are importable from here.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from amoeba_core.data import balanced_windows, split_docs, spread_windows, window_docs
from amoeba_core.distributed import shard, union, world
from amoeba_core.errors import AmoebaError
from amoeba_core.mc import MCItem, mc_accuracy, reference_score
from amoeba_core.model import LoadedModel
from amoeba_core.scores import METRICS, MIN_DOC_UNITS, ShapeScore, _replace_cached, compare, windows_id
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy
from amoeba_core.subnet import width_hooks

if TYPE_CHECKING:
    import torch

__all__ = ["METRICS", "MIN_DOC_UNITS", "DistillEvaluator", "Evaluator", "MCItem", "ShapeScore", "compare",
           "mc_accuracy", "reference_score", "windows_id"]

log = logging.getLogger(__name__)


class Evaluator:
    """Scores shapes of one loaded model on one split (see the module docstring).

    ``cache`` is a JSON-lines file; every new score is appended, so a killed run loses
    at most the shape it was computing. ``spread``: the ``max_windows`` windows are spread evenly
    over the whole split (:func:`amoeba_core.data.spread_windows`) instead of being its first ones;
    ``balance``: an equal share of them from each source, each spread over its part
    (:func:`amoeba_core.data.balanced_windows`). ``memo_mb`` bounds the memoised prefix states.
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
        window_doc: Sequence[int] | None = None,
        spread: bool = False,
        balance: bool = False,
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
        if windows is not None:
            self.ids = windows
            self.window_doc = None if window_doc is None else tuple(int(d) for d in window_doc)
        elif balance and max_windows is not None:  # an equal share of the budget from each source
            self.ids, docs = balanced_windows(loaded.tokenizer, split, seq_len, max_windows, seed)
            self.window_doc = tuple(docs)
        elif spread and max_windows is not None:  # the budget sampled over the whole split
            self.ids, docs = spread_windows(loaded.tokenizer, split_docs(split, seed), seq_len, max_windows)
            self.window_doc = tuple(docs)
        else:  # the first max_windows windows
            self.ids, docs = window_docs(loaded.tokenizer, split_docs(split, seed), seq_len, max_windows)
            self.window_doc = tuple(docs)
        self.n_windows = int(self.ids.shape[0])
        if self.window_doc is not None and len(self.window_doc) != self.n_windows:
            raise AmoebaError(f"window_doc has {len(self.window_doc)} entries for {self.n_windows} windows")
        self.windows_id = windows_id(self.ids)
        self.device = next(loaded.model.parameters()).device  # the windows go where the model is (--device)
        self.ids = self.ids.to(self.device)
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
                    self._scores[key] = ShapeScore.from_json(row)
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue  # a torn last line from a killed run
        n_layers = len(loaded.model.model.layers)
        self._mask = None
        with torch.no_grad():
            model = loaded.model.model
            pos = torch.arange(seq_len, device=self.device).unsqueeze(0)
            self._pos = pos
            dummy = torch.zeros(1, seq_len, model.config.hidden_size, dtype=next(model.parameters()).dtype,
                                device=self.device)
            self._pe = model.rotary_emb(dummy, position_ids=pos)
        self._n_layers = n_layers

    # --- public ---------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return self.n_windows * (self.seq_len - 1)

    def key(self, shape: SubnetShape) -> str:
        wid = self.strategy.width_id if (shape.narrowed and self.strategy is not None) else "-"
        key = f"{self.loaded.score_id}|{shape.key}|{wid}|{self.split}|{self.seq_len}|{self.n_windows}|{self.windows_id}"
        dtype = str(next(self.loaded.model.parameters()).dtype).removeprefix("torch.")
        return key if dtype == "float32" else f"{key}|{dtype}"  # scores in another precision are other numbers

    def score(self, shape: SubnetShape) -> ShapeScore:
        """Score ``shape`` (from the cache when it was scored before)."""
        shape.check_fits(self._n_layers)
        if shape.narrowed and self.strategy is None:
            raise AmoebaError(f"shape {shape.grid_key} narrows the width: the evaluator needs a strategy")
        k = self.key(shape)
        if k in self._scores:
            return _replace_cached(self._scores[k])
        t0 = time.perf_counter()
        nll_w, correct_w, n_w = self._run(shape)
        return self._record(shape, (nll_w, correct_w, n_w), time.perf_counter() - t0)

    def _record(self, shape: SubnetShape, units: tuple[list[float], list[int], list[int]], sec: float) -> ShapeScore:
        k = self.key(shape)
        nll_w, correct_w, n_w = units
        s = ShapeScore.from_units(shape.key, self.split, nll_w, correct_w, n_w, sec, self.window_doc, self.windows_id)
        self._scores[k] = s
        self.n_evaluated += 1
        self.eval_seconds += sec
        self._append(k, s)
        return s

    def _append(self, key: str, s: ShapeScore) -> None:
        if self.cache is not None and world()[0] == 0:  # in a torchrun group rank 0 keeps the cache
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            with self.cache.open("a") as f:
                f.write(json.dumps({"key": key, **s.to_json()}) + "\n")

    def score_many(self, shapes: list[SubnetShape]) -> list[ShapeScore]:
        """Scores of ``shapes``; full-width ones not scored yet run together (:meth:`_run_together`).
        Under torchrun the shapes not scored yet are dealt over the ranks (:func:`~amoeba_core.distributed.shard`)
        and every rank gets every score, so the DP's and the search's decisions are the same on each."""
        todo = [s for s in dict.fromkeys(shapes) if self.key(s) not in self._scores]
        if world()[1] > 1:
            todo = union(todo)  # the same list on every rank, or the ranks' shares would not line up
            fresh = dict(zip(todo, shard(todo, self._score_local)))
            for s, sc in fresh.items():
                if self.key(s) not in self._scores:  # scored by another rank
                    self._scores[self.key(s)] = sc
                    self._append(self.key(s), sc)
            return [fresh[s] if s in fresh else self.score(s) for s in shapes]
        return self._score_local(shapes)

    def _score_local(self, shapes: list[SubnetShape]) -> list[ShapeScore]:
        todo = [s for s in dict.fromkeys(shapes) if self.key(s) not in self._scores]
        together = [s for s in todo if not s.narrowed] if self.loaded.adapters is None else []
        fresh: dict[SubnetShape, ShapeScore] = {}
        if len(together) > 1:
            for s in together:
                s.check_fits(self._n_layers)
            t0 = time.perf_counter()
            units = self._run_together(together)
            sec = (time.perf_counter() - t0) / len(together)
            fresh = {s: self._record(s, u, sec) for s, u in zip(together, units)}
        return [fresh[s] if s in fresh else self.score(s) for s in shapes]

    def _run_together(
        self, shapes: list[SubnetShape], max_rows: int = 32
    ) -> list[tuple[list[float], list[int], list[int]]]:
        """Per-window units of full-width shapes, computed together: each starts from its longest
        memoised prefix, then layer by layer (ascending) the states of every shape that keeps the
        layer go through it as one batch (at most ``max_rows`` windows). Shapes that so far applied
        the same layers to the same prefix hold the same states, which are computed once (the DP's
        candidates of a step often keep the same layers right after the visited one). Results
        equal the one-shape path up to float rounding."""
        import torch

        inner = self.loaded.model.model
        w = shapes[0].axes
        W = self.n_windows
        with torch.no_grad():
            states: list[torch.Tensor] = []
            rest: list[list[int]] = []
            k_maxs: list[int] = []
            for s in shapes:
                k_max = self._prefix(s)
                start = next((k for k in range(k_max, 0, -1) if (w, k) in self._memo), 0)
                if start:
                    self._memo.move_to_end((w, start))
                    states.append(torch.cat(self._memo[(w, start)]))
                else:
                    states.append(torch.cat([inner.embed_tokens(b) for b in self.ids.split(self.batch_size)]))
                rest.append(list(s.layers[start:]))
                k_maxs.append(k_max)
            done = [len(s.layers) - len(r) for s, r in zip(shapes, rest)]
            # a state is named by its start prefix and the layers applied since: equal names, equal states
            keys: list[tuple[int, tuple[int, ...]]] = [(d, ()) for d in done]
            by_key = {k: h for k, h in zip(keys, states)}
            per = max(1, max_rows // W)
            for layer_idx in sorted(set().union(*rest)):
                group = [i for i, r in enumerate(rest) if r and r[0] == layer_idx]
                uniq = list(dict.fromkeys(keys[i] for i in group))
                for c in range(0, len(uniq), per):
                    chunk = uniq[c:c + per]
                    out = self._layer(inner.layers[layer_idx], torch.cat([by_key[k] for k in chunk]))
                    for k, h in zip(chunk, out.split(W)):
                        by_key[(k[0], (*k[1], layer_idx))] = h
                for i in group:
                    keys[i] = (keys[i][0], (*keys[i][1], layer_idx))
                    rest[i].pop(0)
                    done[i] += 1
                    if done[i] <= k_maxs[i]:
                        self._remember((w, done[i]), list(by_key[keys[i]].clone().split(self.batch_size)))
                live = set(keys)
                by_key = {k: h for k, h in by_key.items() if k in live}
            return [self._heads(by_key[k].split(self.batch_size)) for k in keys]

    # --- engine -----------------------------------------------------------------------
    def _prefix(self, shape: SubnetShape) -> int:
        """Length k of the unchanged prefix: shape keeps layers 0..k-1."""
        k = 0
        for i, layer in enumerate(shape.layers):
            if layer != i:
                break
            k = i + 1
        return k

    def _run(self, shape: SubnetShape) -> tuple[list[float], list[int], list[int]]:
        from amoeba_core.smol import set_shape

        set_shape(self.loaded.model, shape)  # routes Stage 2 adapters, if installed
        try:
            return self._run_layers(shape)
        finally:
            set_shape(self.loaded.model, None)

    def _run_layers(self, shape: SubnetShape) -> tuple[list[float], list[int], list[int]]:
        import torch

        model = self.loaded.model
        inner = model.model
        k_max = self._prefix(shape)
        w = shape.axes  # (attention, MLP) ratios: memo key and masks
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
            hs = list(states)
            for j, layer_idx in enumerate(shape.layers[start:]):
                layer = inner.layers[layer_idx]
                hs = [self._layer(layer, h) for h in hs]
                if start + j + 1 <= k_max:
                    self._remember((w, start + j + 1), hs)
            return self._heads(hs)

    def _heads(self, hs: Sequence[torch.Tensor]) -> tuple[list[float], list[int], list[int]]:
        """Per-window units (NLL sums, right tokens, token counts) of final hidden states, batch by batch."""
        nll_w: list[float] = []
        correct_w: list[int] = []
        n_w: list[int] = []
        for i, (b, h) in enumerate(zip(self.ids.split(self.batch_size), hs)):
            s, c, m = self._head(h, b, i)
            nll_w += s
            correct_w += c
            n_w += m
        return nll_w, correct_w, n_w

    def _layer(self, layer: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        cos, sin = self._pe
        out = layer(h, attention_mask=None, position_ids=self._pos, position_embeddings=(cos, sin))
        return out[0] if isinstance(out, tuple) else out

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        model = self.loaded.model
        return model.lm_head(model.model.norm(h))[:, :-1].float()

    def _head(self, h: torch.Tensor, ids: torch.Tensor, batch: int = 0) -> tuple[list[float], list[int], list[int]]:
        """Per window of batch number ``batch``: NLL sum, right tokens, predicted tokens."""
        import torch.nn.functional as F

        logits = self._logits(h)
        target = ids[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        nll = nll.view(target.shape).double().sum(1)
        correct = (logits.argmax(-1) == target).sum(1)
        return nll.tolist(), [int(c) for c in correct], [int(target.shape[1])] * int(target.shape[0])

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


class DistillEvaluator(Evaluator):
    """Scores a shape by how far its next-token distribution is from the full model's on the
    same windows: per window the sum over tokens of ``KL(p_full || p_shape)`` in nats.

    The returned :class:`ShapeScore` keeps that sum where an :class:`Evaluator` keeps the NLL sum:
    its ``nll`` is the mean KL per token (``ppl`` is ``exp`` of it, ``top1_acc`` the share of
    tokens whose arg-max agrees with the *full model's* arg-max), so intervals, :func:`compare` and
    the score cache work unchanged; the cache key and ``split`` say ``kl``. A depth DP calibrated on
    it matches the full model's whole distribution at every token instead of the one observed next
    token (``benchmarks/stage1.py`` compares the two). The full model's log-probabilities of all
    windows are held in memory (windows x (seq_len - 1) x vocabulary float32: 200 MB for 4 windows
    of 256 tokens of SmolLM2) and computed on first use, unless every shape asked is cached.
    """

    def __init__(self, loaded: LoadedModel, *args: Any, **kw: Any) -> None:
        super().__init__(loaded, *args, **kw)
        if self.strategy is not None or loaded.adapters is not None:
            raise AmoebaError("the KL metric compares full-width subnets of the bare model with the full model")
        self.split = f"{self.split}:kl"
        self._teacher: list[torch.Tensor] | None = None

    def _teacher_logp(self, batch: int) -> torch.Tensor:
        import torch

        if self._teacher is None:
            inner = self.loaded.model.model
            with torch.no_grad():
                self._teacher = []
                for b in self.ids.split(self.batch_size):
                    h = inner.embed_tokens(b)
                    for layer in inner.layers:
                        h = self._layer(layer, h)
                    self._teacher.append(torch.log_softmax(self._logits(h), -1))
        return self._teacher[batch]

    def _head(self, h: torch.Tensor, ids: torch.Tensor, batch: int = 0) -> tuple[list[float], list[int], list[int]]:
        """Per window: sum of KL(full || shape) over its predicted tokens, tokens whose arg-max
        agrees with the full model's, predicted tokens."""
        import torch

        logq = torch.log_softmax(self._logits(h), -1)
        logp = self._teacher_logp(batch)
        kl = (logp.exp() * (logp - logq)).sum(-1).double().sum(1)
        agree = (logq.argmax(-1) == logp.argmax(-1)).sum(1)
        n = int(logp.shape[1])
        return kl.tolist(), [int(a) for a in agree], [n] * int(logp.shape[0])
