"""Stage 1 depth: the AmoebaLLM dynamic-programming layer selection, and two baselines.

With ``N`` layers the last layer is always kept and the others are visited from the last
towards the first: ``L = [N-2, N-3, ..., 0]``. ``D[t][m]`` is the best set of ``m`` removed
layers among the first ``t`` visited ones::

    D[t][0] = {}
    D[t][m] = better of  D[t-1][m-1] + {L[t-1]}   and   D[t-1][m]   (the latter only if m <= t-1)

"better" is judged by a metric of the *full* model with that set removed (by default the
calibration perplexity; any function of a shape can be passed). Depth ``N - m`` keeps the
complement of ``D[N-1][m]``. Each ``(t, m)`` needs one new evaluation (the second option was
scored before), so the DP makes ``sum_t min(t, M)`` evaluations, ``O(N * M)``. Every
candidate keeps all layers before ``L[t-1]`` unchanged, so the evaluator's memoised prefix
hidden states make each evaluation run only the suffix. A killed run resumes through the
evaluator's on-disk score cache.

:func:`swap_refine` then improves a depth's set by local search on the same metric (swap one removed
layer for one kept layer while that helps): the DP judges each layer only in the context of the sets it
built so far, and on SmolLM2 another setting's d27 set scored better than the DP's on the DP's own
calibration windows (``select_depth(refine=...)``, benchmarks/stage1.py ``+swap`` settings).

Baselines: ``drop_last`` (keep the first ``d`` layers) and ``block_influence`` (ShortGPT:
remove the layers whose output is most similar to their input, by mean cosine similarity
on calibration tokens).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape

if TYPE_CHECKING:
    import torch

    from amoeba_core.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class DepthResult:
    """Kept layers per depth, their metric, and the cost of finding them."""

    layers: dict[int, tuple[int, ...]]
    scores: dict[int, float]
    n_evaluations: int
    n_cached: int
    seconds: float
    trace: list[dict[str, object]] = field(default_factory=list)
    refined: dict[int, SwapResult] = field(default_factory=dict)
    refine_seconds: float = 0.0


def n_dp_evaluations(n_layers: int, min_depth: int) -> int:
    """Evaluations the DP makes: ``sum over t of min(t, N - min_depth)``."""
    m_max = n_layers - min_depth
    return sum(min(t, m_max) for t in range(1, n_layers))


def check_min_depth(n_layers: int, min_depth: int) -> None:
    if not 1 <= min_depth <= n_layers:
        raise AmoebaError(f"min-depth {min_depth} is out of range 1..{n_layers}")


def dp_depth(
    n_layers: int,
    min_depth: int,
    metric: Callable[[SubnetShape], float],
    progress: Callable[[int, int], None] | None = None,
    is_cached: Callable[[SubnetShape], bool] | None = None,
    metric_many: Callable[[list[SubnetShape]], list[float]] | None = None,
) -> DepthResult:
    """Run the DP (module docstring). ``metric(shape)``: lower is better.

    ``metric_many(shapes)``, when given, scores the candidates of one step at once (they do not
    depend on each other's scores and share the prefix before the visited layer, so an
    evaluator can run their suffixes together); the decisions are the same as with ``metric``.
    """
    check_min_depth(n_layers, min_depth)
    m_max = n_layers - min_depth
    total = n_dp_evaluations(n_layers, min_depth)
    visit = list(range(n_layers - 2, -1, -1))
    full = SubnetShape(tuple(range(n_layers)))
    t0 = time.perf_counter()
    scored: dict[frozenset[int], float] = {frozenset(): metric(full)}
    prev: dict[int, frozenset[int]] = {0: frozenset()}
    done = cached = 0
    trace: list[dict[str, object]] = []

    def score_all(sets: list[frozenset[int]]) -> None:
        nonlocal done, cached
        new = [r for r in dict.fromkeys(sets) if r not in scored]
        if not new:
            return
        shapes = [SubnetShape(tuple(i for i in range(n_layers) if i not in r)) for r in new]
        if is_cached is not None:
            cached += sum(1 for sh in shapes if is_cached(sh))
        values = metric_many(shapes) if metric_many is not None and len(shapes) > 1 else [metric(sh) for sh in shapes]
        for r, v in zip(new, values):
            scored[r] = v
            done += 1
            if progress is not None:
                progress(done, total)

    def score(removed: frozenset[int]) -> float:
        score_all([removed])
        return scored[removed]

    for t in range(1, n_layers):
        layer = visit[t - 1]
        if metric_many is not None:  # every candidate of this step at once
            score_all([prev[m - 1] | {layer} for m in range(1, min(t, m_max) + 1)])
        cur: dict[int, frozenset[int]] = {0: frozenset()}
        for m in range(1, min(t, m_max) + 1):
            take = prev[m - 1] | {layer}
            s_take = score(take)
            if m <= t - 1 and m in prev and scored[prev[m]] <= s_take:
                cur[m] = prev[m]
            else:
                cur[m] = take
        prev = cur
        trace.append({"visited": layer, "best": {m: sorted(s) for m, s in cur.items()}})
    layers = {n_layers - m: tuple(i for i in range(n_layers) if i not in s) for m, s in prev.items()}
    scores = {n_layers - m: scored[s] for m, s in prev.items()}
    return DepthResult(layers, scores, done, cached, time.perf_counter() - t0, trace)


@dataclass(frozen=True)
class Verdict:
    """What an ``accept`` rule of :func:`swap_refine` said (true when the swap is taken) and why, for the
    move's record (e.g. the paired interval it judged on)."""

    ok: bool
    record: dict[str, object] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class SwapResult:
    """One depth's removal set after :func:`swap_refine`, and what the refinement did."""

    removed: frozenset[int]
    score: float
    start_removed: frozenset[int]
    start_score: float
    passes: int
    evaluations: int
    screened: int
    moves: list[dict[str, object]] = field(default_factory=list)
    # the best swap of the last pass when ``accept`` refused it (it scored lower, but not enough)
    refused: dict[str, object] | None = None

    def record(self) -> dict[str, object]:
        """What the refinement did, for a strategy's stats or a benchmark's JSON."""
        return {"dp_removed": sorted(self.start_removed), "removed": sorted(self.removed),
                "dp_calib": round(self.start_score, 4), "calib": round(self.score, 4),
                "passes": self.passes, "evaluations": self.evaluations, "screened": self.screened,
                **({"refused": self.refused} if self.refused else {})}


def swap_candidates(n_layers: int, removed: frozenset[int]) -> list[frozenset[int]]:
    """Every set that swaps one removed layer for one kept layer (the last layer stays kept)."""
    kept = [i for i in range(n_layers - 1) if i not in removed]
    return [(removed - {r}) | {k} for r in sorted(removed) for k in kept]


def swap_refine(
    n_layers: int,
    removed: frozenset[int] | set[int] | tuple[int, ...],
    metric_many: Callable[[list[SubnetShape]], list[float]],
    screen_many: Callable[[list[SubnetShape]], list[float]] | None = None,
    keep: int = 5,
    max_passes: int = 4,
    accept: Callable[[SubnetShape, SubnetShape], bool | Verdict] | None = None,
) -> SwapResult:
    """Local search from a removal set (e.g. the DP's): swap one removed layer for one kept one while
    that lowers ``metric_many`` (lower is better; one value per shape).

    The DP judges each layer in the context of the sets it has built so far, so its set is not the
    optimum of its own metric (on SmolLM2 another setting's d27 set scored better on the DP's own
    calibration windows). Each pass scores all ``m * (N - 1 - m)`` swaps; with ``screen_many`` (the
    metric on fewer windows) they are screened with it and only the ``keep`` best are scored with
    ``metric_many``. The best swap is taken when it beats the current set on ``metric_many`` (and,
    with ``accept``, when ``accept(current, candidate)`` also says yes, e.g. when the gain's paired interval
    excludes 0: :func:`amoeba_core.select.refine_depth`; a :class:`Verdict`'s record is kept in the move as
    ``"judge"``); otherwise, or after ``max_passes`` passes, the search stops.
    """
    if keep < 1 or max_passes < 0:
        raise AmoebaError(f"keep must be >= 1 and max_passes >= 0, got {keep} and {max_passes}")
    cur = frozenset(removed)
    if n_layers - 1 in cur or any(not 0 <= i < n_layers for i in cur):
        raise AmoebaError(f"removal set {sorted(cur)} must lie in 0..{n_layers - 2} (the last layer is kept)")

    def shape(r: frozenset[int]) -> SubnetShape:
        return SubnetShape(tuple(i for i in range(n_layers) if i not in r))

    cur_score = metric_many([shape(cur)])[0]
    out = SwapResult(cur, cur_score, cur, cur_score, 0, 1, 0)
    if not cur:
        return out
    for _ in range(max_passes):
        cands = swap_candidates(n_layers, cur)
        if screen_many is not None and len(cands) > keep:
            pre = screen_many([shape(c) for c in cands])
            out.screened += len(cands)
            cands = [cands[i] for i in sorted(range(len(cands)), key=lambda i: pre[i])[:keep]]
        vals = metric_many([shape(c) for c in cands])
        out.evaluations += len(cands)
        out.passes += 1
        best = min(range(len(cands)), key=lambda i: vals[i])
        if vals[best] >= cur_score:
            break
        move = {"restored": sorted(cur - cands[best]), "removed": sorted(cands[best] - cur),
                "before": cur_score, "after": vals[best]}
        if accept is not None:
            verdict = accept(shape(cur), shape(cands[best]))
            if isinstance(verdict, Verdict) and verdict.record:
                move["judge"] = verdict.record
            if not verdict:
                out.refused = move
                break
        out.moves.append(move)
        cur, cur_score = cands[best], vals[best]
    out.removed, out.score = cur, cur_score
    return out


def drop_last(n_layers: int, depths: list[int]) -> dict[int, tuple[int, ...]]:
    """Baseline: keep the first ``d`` layers."""
    return {d: tuple(range(d)) for d in depths}


def block_influence(loaded: LoadedModel, ids: torch.LongTensor, batch_size: int = 4) -> list[float]:
    """ShortGPT block influence per layer: ``1 - mean cos(h_in, h_out)`` over calibration tokens."""
    import torch
    import torch.nn.functional as F

    model = loaded.model
    n = len(model.model.layers)
    sums = [0.0] * n
    count = 0
    with torch.no_grad():
        device = next(model.parameters()).device
        for b in ids.split(batch_size):
            b = b.to(device)
            hs = model(input_ids=b, use_cache=False, output_hidden_states=True).hidden_states
            # hidden_states[i] is the input of layer i; the last entry is after the final norm
            for i in range(n):
                h_in = hs[i]
                h_out = hs[i + 1] if i + 1 < n else _last_layer_output(model, hs[n - 1], b)
                sums[i] += float(F.cosine_similarity(h_in, h_out, dim=-1).sum())
            count += b.numel()
    return [1.0 - s / count for s in sums]


def _last_layer_output(model: torch.nn.Module, h_in: torch.Tensor, ids: torch.LongTensor) -> torch.Tensor:
    import torch

    inner = model.model
    pos = torch.arange(ids.shape[1], device=h_in.device).unsqueeze(0)
    pe = inner.rotary_emb(h_in, position_ids=pos)
    out = inner.layers[-1](h_in, attention_mask=None, position_ids=pos, position_embeddings=pe)
    return out[0] if isinstance(out, tuple) else out


def block_influence_layers(influence: list[float], depths: list[int]) -> dict[int, tuple[int, ...]]:
    """Baseline: for each depth keep the ``d`` layers of highest block influence."""
    order = sorted(range(len(influence)), key=lambda i: influence[i], reverse=True)
    return {d: tuple(sorted(order[:d])) for d in depths}
