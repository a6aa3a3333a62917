"""Stage 2: one-for-all fine-tuning of every subnet shape with SMoL adapters.

Each optimizer step runs a *sandwich* of ``K`` shapes on the same batch: the largest shape,
the smallest and ``K-2`` others drawn at random from the strategy's shapes. *In-place
distillation*: the largest learns from the labels (cross-entropy); the others learn from the
largest's detached logits (KL divergence), or from the labels when distillation is off.
*Loss-magnitude balancing* (``balance_to="others"``, the default): every other shape's loss is
multiplied by the detached ratio ``reference / loss_shape``, where the reference is a running
mean (EMA, 0.9) of the other shapes' own losses, so each distilled subnet contributes a loss of
the same magnitude and the distillation terms together keep the scale they had unbalanced.
``balance_to="largest"`` takes the largest shape's loss as the reference instead (each subnet
contributes a loss of the largest's magnitude). With distillation on, that reference is a
cross-entropy while the others are KL divergences several times smaller, so it multiplies the
distillation gradients by that factor and, under the global gradient-norm clip, shrinks the
largest shape's own step (measured in ``benchmarks/stage2_ablation.py``'s ``balancing`` record). Gradients accumulate over ``grad_accum`` micro-batches; AdamW with linear warm-up
and cosine decay. Only adapter tensors train (the base model is frozen).

Reproducibility: the batch, the shapes and the gate noise of step ``i`` depend only on
``(seed, i)``, so a run resumed from a checkpoint continues exactly as an uninterrupted run.
A checkpoint (adapters, optimizer, scheduler, RNG states, step) is written atomically every
``checkpoint_every`` steps and at the end, next to ``adapters.pt`` and ``smol.json``.
Training text is the ``train`` split of :func:`amoeba_core.data.text_splits`, which shares no
document with Stage 1's ``calib``/``val``/``test`` splits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from amoeba_core.distributed import init_distributed, world as _world  # noqa: F401  (re-exported)
from amoeba_core.errors import AmoebaError
from amoeba_core.shape import SubnetShape
from amoeba_core.smol import (
    SMoLConfig,
    adapted_subnet,
    adapter_state,
    install_smol,
    load_adapter_state,
)
from amoeba_core.strategy import Strategy

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

    from amoeba_core.model import LoadedModel

log = logging.getLogger(__name__)

CHECKPOINT, ADAPTERS, META, LOG = "checkpoint.pt", "adapters.pt", "smol.json", "train_log.jsonl"
BALANCE_TO = ("others", "largest")
BALANCE_EMA = 0.9


@dataclass
class FinetuneConfig:
    steps: int = 100
    k: int = 4
    seq_len: int = 128
    batch: int = 2
    grad_accum: int = 1
    lr: float = 2e-4
    warmup: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    rank: int = 8
    experts: int = 4
    top_k: int = 2
    alpha: float = 16.0
    smol: bool = True  # False: one shared LoRA (E=1, k=1)
    distill: bool = True
    balance: bool = True
    balance_to: str = "others"  # reference magnitude: "others" (running mean of the distilled losses) or "largest"
    min_depth: int | None = None  # restrict the sampled shape space
    train_shapes: list[str] = field(default_factory=list)  # grid keys; non-empty: train only these
    checkpoint_every: int = 10
    gradient_checkpointing: bool = False  # recompute each decoder layer in backward (less activation memory)
    seed: int = 0
    data_seed: int = 0

    def __post_init__(self) -> None:
        if self.balance_to not in BALANCE_TO:
            raise AmoebaError(f"balance_to must be one of {', '.join(BALANCE_TO)}, got {self.balance_to!r}")

    def smol_config(self, n_layers: int, widths: tuple[float, ...]) -> SMoLConfig:
        e, k = (self.experts, self.top_k) if self.smol else (1, 1)
        return SMoLConfig(n_layers=n_layers, widths=widths, n_experts=e, rank=self.rank, top_k=k,
                          alpha=self.alpha, init_seed=self.seed)


@dataclass
class StepReport:
    step: int
    losses: dict[str, float]
    lr: float
    seconds: float


def shape_space(strategy: Strategy, cfg: FinetuneConfig) -> list[SubnetShape]:
    """The shapes the sandwich samples from, largest first, smallest last."""
    if cfg.train_shapes:
        shapes = [strategy.resolve(s) for s in cfg.train_shapes]
    else:
        lo = cfg.min_depth or min(strategy.depths)
        shapes = [s for s in strategy.shapes() if s.depth >= lo]
    shapes = sorted(set(shapes), key=lambda s: (-s.depth, -s.width))
    if not shapes:
        raise AmoebaError("no shapes to fine-tune (check --min-depth against the strategy's depths)")
    if cfg.k < 1 or cfg.k > len(shapes):
        raise AmoebaError(f"K={cfg.k} shapes per step, but only {len(shapes)} shapes are available")
    if len(shapes) > 1 and cfg.k < 2:
        raise AmoebaError("K must be >= 2 to include the largest and the smallest shape")
    return shapes


def sandwich(shapes: list[SubnetShape], k: int, rng: random.Random) -> list[SubnetShape]:
    """Largest, smallest and ``k-2`` distinct random others."""
    if k == 1:
        return [shapes[0]]
    middle = rng.sample(shapes[1:-1], k - 2) if k > 2 else []
    return [shapes[0], *middle, shapes[-1]]


_WINDOWS: dict[tuple[int, int, int], torch.Tensor] = {}


def train_windows(tokenizer: Any, seq_len: int, data_seed: int = 0) -> torch.Tensor:
    """All ``seq_len`` windows of the ``train`` split (memoised per tokenizer object)."""
    from amoeba_core.data import token_windows

    key = (id(tokenizer), seq_len, data_seed)
    if key not in _WINDOWS:
        _WINDOWS[key] = token_windows(tokenizer, train_docs(data_seed), seq_len)
    return _WINDOWS[key]


def train_docs(data_seed: int = 0) -> list[str]:
    """The ``train`` split; :mod:`amoeba_core.data` already drops every document that shares
    text with calib/val/test."""
    from amoeba_core.data import text_splits

    return text_splits(data_seed)["train"]


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    s = torch.log_softmax(student[:, :-1].float(), -1)
    t = torch.log_softmax(teacher[:, :-1].float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def _schedule(cfg: FinetuneConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / (cfg.warmup + 1)
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _meta(loaded: LoadedModel, strategy: Strategy, cfg: FinetuneConfig, scfg: SMoLConfig) -> dict[str, Any]:
    return {
        "model_source": loaded.source,
        "model_fingerprint": loaded.fingerprint,
        "strategy_fingerprint": strategy.model_fingerprint,
        "strategy_width_id": strategy.width_id,
        "finetune": asdict(cfg),
        "smol": scfg.to_dict(),
    }


def _all_reduce(params: list[torch.nn.Parameter], sums: dict[str, float]) -> dict[str, float]:
    """Sum every rank's gradients (each already divided by the global micro-batch count) and losses."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=params[0].device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def finetune(
    loaded: LoadedModel,
    strategy: Strategy,
    cfg: FinetuneConfig,
    out: str | Path,
    resume: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    stop_after: int | None = None,
    time_budget_s: float | None = None,
) -> LlamaForCausalLM:
    """Fine-tune SMoL adapters on ``loaded.model`` (installed in place) and write them to ``out``.

    ``resume`` continues from ``out/checkpoint.pt`` (an error if there is none); without it an
    existing checkpoint in ``out`` is an error too, so no run is overwritten by accident.
    ``stop_after`` / ``time_budget_s`` end the run early (after a checkpoint) -- used to
    simulate a kill and to budget benchmarks by wall time. Returns the adapted model.
    """
    if strategy.model_fingerprint != loaded.fingerprint:
        raise AmoebaError(
            f"strategy is for model {strategy.model_fingerprint} ({strategy.model_source}), "
            f"the loaded model is {loaded.fingerprint} ({loaded.source})"
        )
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise AmoebaError(f"cannot resume: no checkpoint at {ckpt_path}")
    if not resume and ckpt_path.is_file():
        raise AmoebaError(f"{out} already holds a checkpoint: pass --resume or choose another --out")
    shapes = shape_space(strategy, cfg)
    model = loaded.model
    scfg = cfg.smol_config(len(model.model.layers), tuple(strategy.widths))
    install_smol(model, scfg)
    meta = _meta(loaded, strategy, cfg, scfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    start, seen = 0, 0
    others_ref: float | None = None  # running mean of the non-largest shapes' raw losses (balance_to="others")
    rank, world = _world()
    if resume:
        ck = torch.load(ckpt_path, weights_only=False)
        old = ck["meta"]
        if old["smol"] != meta["smol"] or old["model_fingerprint"] != meta["model_fingerprint"]:
            raise AmoebaError(f"checkpoint {ckpt_path} was made with another model or adapter layout")
        load_adapter_state(model, ck["adapters"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        random.setstate(ck["rng"]["python"])
        start = ck["step"]
        others_ref = ck.get("balance_ref")
        seen = int(ck.get("windows_seen", start * cfg.grad_accum * cfg.batch))
        log.info("resumed from %s at step %d", ckpt_path, start)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / META).write_text(json.dumps(meta, indent=2))
    windows = train_windows(loaded.tokenizer, cfg.seq_len, cfg.data_seed)
    device = next(model.parameters()).device
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    t_start = time.perf_counter()

    def save(step: int) -> None:
        if rank != 0:
            return
        _atomic_save({"step": step, "windows_seen": seen, "tokens_seen": seen * cfg.seq_len,
                      "world_size": world, "adapters": adapter_state(model), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "meta": meta, "balance_ref": others_ref,
                      "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}, ckpt_path)

    step = start
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            rng = random.Random(cfg.seed * 1_000_003 + step)
            picked = sandwich(shapes, cfg.k, rng)
            sums: dict[str, float] = {}
            n_micro = cfg.grad_accum * world  # global micro-batches of this step; this rank runs its share
            for micro in range(rank * cfg.grad_accum, (rank + 1) * cfg.grad_accum):
                torch.manual_seed((cfg.seed * 1_000_003 + step) * 1_009 + micro)  # gate noise of this micro-batch
                g = seen + micro * cfg.batch
                ids = windows[order[torch.arange(g, g + cfg.batch) % len(windows)]].to(device)
                teacher, ref = None, None
                for i, shape in enumerate(picked):
                    # backward inside the context: gradient checkpointing recomputes the shape's forward there
                    with adapted_subnet(model, shape, strategy) as m:
                        logits = m(input_ids=ids).logits
                        if i == 0 or not cfg.distill or teacher is None:
                            loss = _lm_loss(logits, ids)
                        else:
                            loss = _kl(logits, teacher)
                        if i == 0:
                            teacher, ref = logits.detach(), loss.detach()
                        raw = float(loss.detach())
                        if i > 0 and cfg.balance:
                            target = ref if cfg.balance_to == "largest" else others_ref
                            if target is not None:  # "others" has no reference before its first step
                                loss = loss * (target / loss.detach().clamp_min(1e-8))
                        (loss / n_micro).backward()
                    key = ("largest" if i == 0 else "smallest" if i == len(picked) - 1 else shape.grid_key)
                    sums[key] = sums.get(key, 0.0) + raw / n_micro
            seen += n_micro * cfg.batch
            if world > 1:
                sums = _all_reduce(params, sums)
            others = [v for k_, v in sums.items() if k_ != "largest"]
            if others:
                m = sum(others) / len(others)
                others_ref = m if others_ref is None else BALANCE_EMA * others_ref + (1 - BALANCE_EMA) * m
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            rep = StepReport(step + 1, sums, sched.get_last_lr()[0], time.perf_counter() - t0)
            if rank == 0:
                with (out / LOG).open("a") as f:
                    f.write(json.dumps(asdict(rep)) + "\n")
            if on_step:
                on_step(rep)
            done = step + 1
            early = (stop_after is not None and done >= stop_after) or (
                time_budget_s is not None and time.perf_counter() - t_start >= time_budget_s
            )
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or early:
                save(done)
            if early:
                break
    finally:
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
    if rank == 0:
        _atomic_save(adapter_state(model), out / ADAPTERS)
    if world > 1:
        torch.distributed.barrier()
    return model


def steps_done(out: str | Path) -> int:
    p = Path(out) / CHECKPOINT
    return int(torch.load(p, weights_only=False)["step"]) if p.is_file() else 0


def load_adapted(loaded: LoadedModel, strategy: Strategy | None, adapters_dir: str | Path) -> LlamaForCausalLM:
    """Install the adapters of a ``finetune`` run on ``loaded.model`` (in place) and return it.

    Run a shape with :func:`amoeba_core.smol.adapted_subnet`; export a shape with
    :func:`amoeba_core.smol.merge_for_shape`.
    """
    d = Path(adapters_dir)
    if not (d / META).is_file() or not (d / ADAPTERS).is_file():
        raise AmoebaError(f"{d} is not a fine-tuning output (needs {META} and {ADAPTERS})")
    meta = json.loads((d / META).read_text())
    if meta["model_fingerprint"] != loaded.fingerprint:
        raise AmoebaError(
            f"adapters in {d} are for model {meta['model_fingerprint']} ({meta['model_source']}), "
            f"the loaded model is {loaded.fingerprint}"
        )
    if strategy is not None and meta["strategy_width_id"] != strategy.width_id:
        raise AmoebaError(f"adapters in {d} were trained with another strategy (width rankings differ)")
    install_smol(loaded.model, SMoLConfig.from_dict(meta["smol"]))
    load_adapter_state(loaded.model, torch.load(d / ADAPTERS, weights_only=True))
    return loaded.model.eval()


def apply_adapters(loaded: LoadedModel, strategy: Strategy | None, adapters_dir: str | Path) -> LoadedModel:
    """``loaded`` with the adapters of a ``finetune`` run installed and tagged (``--adapters``).

    Scores are cached under the adapters' hash, so an adapted shape never reuses a score of
    the plain model; export folds the shape's experts into a plain subnet.
    """
    import dataclasses
    import hashlib

    load_adapted(loaded, strategy, adapters_dir)
    tag = hashlib.sha1((Path(adapters_dir) / ADAPTERS).read_bytes()).hexdigest()[:10]
    return dataclasses.replace(loaded, adapters=tag)


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, shape: SubnetShape, strategy: Strategy | None, windows: torch.Tensor, batch: int = 4) -> float:
    """Token-weighted perplexity of ``shape`` on ``windows`` (adapters used if installed)."""
    model.eval()
    total, n = 0.0, 0
    with adapted_subnet(model, shape, strategy) as m:
        for i in range(0, len(windows), batch):
            ids = windows[i : i + batch].to(next(model.parameters()).device)
            total += float(_lm_loss(m(input_ids=ids).logits, ids)) * ids[:, 1:].numel()
            n += ids[:, 1:].numel()
    return math.exp(total / n)
