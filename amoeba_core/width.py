"""Stage 1 width: importance-driven ranking of attention heads and MLP channels.

Calibration activations are collected at the inputs of ``o_proj`` (one slice of
``head_dim`` per query head) and ``down_proj`` (one value per MLP channel). A unit ``j``
whose input is ``X_j`` and whose output weights are the column ``W[:, j]`` scores:

* ``flap``  (FLAP fluctuation metric): ``Var(X_j) * ||W[:, j]||_2^2`` — how much the output
  moves when the unit is replaced by its mean. With *bias compensation* (``flap-bias``) a
  dropped unit is indeed replaced by its calibration mean (``o_proj``/``down_proj`` get the
  bias ``W[:, dropped] @ mean[dropped]``).
* ``wanda`` (Wanda-style, structured): ``||X_j||_2 * ||W[:, j]||_1``.
* ``magnitude`` (baseline): L1 norm of all weights of the unit (q/k/v rows, o columns; gate
  and up rows, down column), no data.

Head score = sum over its ``head_dim`` inputs; a KV group scores the sum of its heads. Each
layer ranks groups, heads within groups and channels; a width ratio then keeps the top-k
given by the shared width policy (see :mod:`amoeba_core.shape`). ``choose_width_metric``
measures the candidates (validation perplexity after narrowing at full depth) and keeps the
best.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.strategy import LayerMeans, LayerRanking, Strategy

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METRICS = ("flap-bias", "flap", "wanda", "magnitude")


@dataclass
class CalibStats:
    """Per layer: mean, mean of squares and token count of o_proj / down_proj inputs."""

    attn_mean: list[torch.Tensor]
    attn_sq: list[torch.Tensor]
    mlp_mean: list[torch.Tensor]
    mlp_sq: list[torch.Tensor]
    n_tokens: int


def collect_stats(loaded: LoadedModel, ids: torch.LongTensor, batch_size: int = 4) -> CalibStats:
    """One forward pass of the full model over ``ids`` with input hooks on o_proj/down_proj."""
    import torch

    model = loaded.model
    layers = model.model.layers
    n = len(layers)
    sums: dict[tuple[str, int], torch.Tensor] = {}
    sqs: dict[tuple[str, int], torch.Tensor] = {}

    def hook(kind: str, i: int) -> Callable[..., None]:
        def f(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[(kind, i)] = sums.get((kind, i), 0) + x.sum(0)
            sqs[(kind, i)] = sqs.get((kind, i), 0) + (x * x).sum(0)

        return f

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook("attn", i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook("mlp", i)))
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            for b in ids.split(batch_size):
                model(input_ids=b.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    t = int(ids.numel())
    return CalibStats(
        attn_mean=[sums[("attn", i)] / t for i in range(n)],
        attn_sq=[sqs[("attn", i)] / t for i in range(n)],
        mlp_mean=[sums[("mlp", i)] / t for i in range(n)],
        mlp_sq=[sqs[("mlp", i)] / t for i in range(n)],
        n_tokens=t,
    )


def _unit_scores(loaded: LoadedModel, stats: CalibStats, metric: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-query-head score [n_heads], per-channel score [intermediate]) for layer ``i``."""
    layer = loaded.model.model.layers[i]
    cfg = loaded.model.config
    hd, nh = cfg.head_dim, cfg.num_attention_heads
    hpg = nh // cfg.num_key_value_heads
    wo = layer.self_attn.o_proj.weight.detach().double()
    wd = layer.mlp.down_proj.weight.detach().double()
    if metric in ("flap", "flap-bias"):
        a = (stats.attn_sq[i] - stats.attn_mean[i] ** 2).clamp_min(0) * (wo**2).sum(0)
        m = (stats.mlp_sq[i] - stats.mlp_mean[i] ** 2).clamp_min(0) * (wd**2).sum(0)
    elif metric == "wanda":
        a = (stats.attn_sq[i] * stats.n_tokens).sqrt() * wo.abs().sum(0)
        m = (stats.mlp_sq[i] * stats.n_tokens).sqrt() * wd.abs().sum(0)
    elif metric == "magnitude":
        att = layer.self_attn
        q = att.q_proj.weight.detach().double().abs().sum(1)
        k = att.k_proj.weight.detach().double().abs().sum(1).view(-1, hd).sum(1)
        v = att.v_proj.weight.detach().double().abs().sum(1).view(-1, hd).sum(1)
        a = q + wo.abs().sum(0)  # per input of o_proj (= per q row)
        heads = a.view(nh, hd).sum(1) + ((k + v) / hpg).repeat_interleave(hpg)
        mlp = layer.mlp
        m = (
            mlp.gate_proj.weight.detach().double().abs().sum(1)
            + mlp.up_proj.weight.detach().double().abs().sum(1)
            + wd.abs().sum(0)
        )
        return heads, m
    else:
        raise AmoebaError(f"unknown width metric {metric!r}; known: {', '.join(METRICS)}")
    return a.view(nh, hd).sum(1), m

def rank_layer(head_scores: torch.Tensor, channel_scores: torch.Tensor, n_kv: int) -> LayerRanking:
    hpg = head_scores.numel() // n_kv
    per_group = head_scores.view(n_kv, hpg)
    groups = per_group.sum(1).argsort(descending=True, stable=True).tolist()
    heads = [per_group[g].argsort(descending=True, stable=True).tolist() for g in range(n_kv)]
    chans = channel_scores.argsort(descending=True, stable=True).tolist()
    return LayerRanking(groups=tuple(groups), heads=tuple(tuple(h) for h in heads), channels=tuple(chans))

def rankings(loaded: LoadedModel, stats: CalibStats | None, metric: str) -> tuple[LayerRanking, ...]:
    if metric != "magnitude" and stats is None:
        raise AmoebaError(f"width metric {metric!r} needs calibration statistics")
    n_kv = loaded.model.config.num_key_value_heads
    out = []
    for i in range(len(loaded.model.model.layers)):
        h, c = _unit_scores(loaded, stats, metric, i)  # type: ignore[arg-type]
        out.append(rank_layer(h, c, n_kv))
    return tuple(out)

def layer_means(stats: CalibStats) -> tuple[LayerMeans, ...]:
    return tuple(
        LayerMeans(attn=LayerMeans.encode(a.float().cpu().numpy()), mlp=LayerMeans.encode(m.float().cpu().numpy()))
        for a, m in zip(stats.attn_mean, stats.mlp_mean)
    )

def apply_metric(base: Strategy, loaded: LoadedModel, stats: CalibStats | None, metric: str) -> Strategy:
    """``base`` with the rankings (and, for ``flap-bias``, the means) of ``metric``."""
    means = layer_means(stats) if metric == "flap-bias" and stats is not None else None
    return base.with_(rankings=rankings(loaded, stats, metric), means=means, width_metric=metric)

def choose_width_metric(
    loaded: LoadedModel,
    base: Strategy,
    stats: CalibStats,
    score: Callable[[Strategy, float], float],
    candidates: tuple[str, ...] = ("flap-bias", "flap", "wanda"),
) -> tuple[Strategy, dict[str, dict[str, float]]]:
    """Measure each candidate metric (``score(strategy, width)``: e.g. val perplexity at full
    depth, lower is better) at the strategy's widths below 1 and keep the one with the lowest
    mean log-score. Returns the chosen strategy and every measurement."""
    widths = [w for w in base.widths if w < 1.0]
    if loaded.geometry.model_type != "llama" and "flap-bias" in candidates:
        # the mean-fill becomes o_proj/down_proj biases on extraction, which only LLaMA's class carries
        log.info("width metric flap-bias skipped: %s has no o_proj/MLP biases", loaded.geometry.model_type)
        candidates = tuple(c for c in candidates if c != "flap-bias")
    report: dict[str, dict[str, float]] = {}
    best: tuple[float, Strategy] | None = None
    for metric in candidates:
        t0 = time.perf_counter()
        s = apply_metric(base, loaded, stats, metric)
        vals = {f"{w:.3f}": score(s, w) for w in widths}
        report[metric] = {**vals, "seconds": time.perf_counter() - t0}
        crit = sum(math.log(v) for v in vals.values()) / max(1, len(vals))
        log.info("width metric %s: %s", metric, vals)
        if best is None or crit < best[0]:
            best = (crit, s)
    assert best is not None
    return best[1], report
