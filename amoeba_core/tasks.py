"""Task accuracy through lm-eval-harness (PyPI ``lm-eval``, the ``eval`` extra).

The paper reports MMLU and commonsense tasks measured with lm-eval-harness; this module runs
the same harness on a *physical* subnet: the shape is extracted (layers removed, heads and
channels sliced) with any Stage 2 adapters folded in (:func:`amoeba_core.smol.merge_for_shape`,
the same model ``amoeba export --format hf`` writes), and handed to lm-eval's Hugging Face model
wrapper (``lm_eval.models.huggingface.HFLM``) as a model object. So a number from here equals
``lm_eval --model hf --model_args pretrained=<exported folder>`` for the same tasks.

Intervals: lm-eval reports a standard error per metric (its own bootstrap or the binomial
formula); we report it as given, plus our 90% bootstrap over the items
(:func:`amoeba_core.stats.mean_ci`) wherever lm-eval exposes per-item values (every leaf task;
a group such as ``mmlu`` gets one when its reported value is the item mean of its subtasks,
i.e. size-weighted). Two shapes scored on the same items compare with a paired interval
(:func:`compare_items`).

Data sets: lm-eval downloads task data from the Hugging Face hub on first use. A machine
without network access runs local tasks only: a YAML task config in a folder given as
``include_path`` (``dataset_path: json`` with ``data_files``), and ``offline=True`` (or the
environment variables ``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1``) so nothing tries the network.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel
from amoeba_core.shape import SubnetShape
from amoeba_core.stats import Interval, PairedDiff, mean_ci, paired_diff
from amoeba_core.strategy import Strategy

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

log = logging.getLogger(__name__)

Z90 = 1.6448536269514722  # two-sided 90% normal quantile, to show lm-eval's stderr as an interval
PREFERRED_METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc")
_SKIP_KEYS = ("alias", "name", "sample_len", "samples")


@dataclass(frozen=True)
class TaskScore:
    """One metric of one task for one shape."""

    task: str
    metric: str  # e.g. "acc", "acc_norm"
    filter: str  # lm-eval's filter name ("none" for plain log-likelihood tasks)
    value: float
    lm_eval_stderr: float | None  # as lm-eval reports it (None where it gives "N/A")
    interval: Interval | None  # our 90% bootstrap over items; None without per-item values
    per_item: tuple[float, ...]  # per-item values in doc_ids order (empty for a group without them)
    doc_ids: tuple[str, ...]  # "<task>/<doc_id>" for each item: pairs two shapes' items
    n: int
    shape_key: str = ""

    @property
    def lm_eval_ci(self) -> tuple[float, float] | None:
        """lm-eval's stderr as a normal 90% interval (value ± 1.645 stderr)."""
        if self.lm_eval_stderr is None:
            return None
        return self.value - Z90 * self.lm_eval_stderr, self.value + Z90 * self.lm_eval_stderr

    def fmt(self) -> str:
        ours = self.interval.fmt(4) if self.interval is not None else f"{self.value:.4f} [no per-item values]"
        theirs = f"lm-eval stderr {self.lm_eval_stderr:.4f}" if self.lm_eval_stderr is not None else "lm-eval stderr n/a"
        return f"{self.task} {self.metric}: {ours} (90% bootstrap over {self.n} items; {theirs})"

    def to_dict(self) -> dict[str, Any]:
        d = {"task": self.task, "metric": self.metric, "filter": self.filter, "value": self.value,
             "lm_eval_stderr": self.lm_eval_stderr, "n": self.n, "shape": self.shape_key}
        if self.interval is not None:
            d["ci90"] = [self.interval.lo, self.interval.hi]
        return d


def set_offline() -> None:
    """Keep datasets and the hub off the network (also when they were imported already)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_DATASETS_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise AmoebaError("lm-eval-harness is not installed: pip install 'amoeba-deploy[eval]' (or pip install lm-eval)") from None
    return lm_eval


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """``"mmlu,hellaswag"`` -> ``["mmlu", "hellaswag"]`` (no empty names, no duplicates)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise AmoebaError("no task given; e.g. --task mmlu,hellaswag,arc_easy")
    return list(dict.fromkeys(names))


def task_manager(tasks: Sequence[str], include_path: str | Path | None = None) -> Any:
    """An lm-eval ``TaskManager`` that knows every task in ``tasks`` (else a clear error).

    When ``include_path`` alone holds them all, lm-eval's own few thousand task files are not
    indexed (that takes many seconds)."""
    _lm_eval()  # a clear error when it is not installed
    from lm_eval.tasks import TaskManager

    names = parse_tasks(tasks)
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise AmoebaError(f"--include-path {include_path} is not a folder of task YAML files")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in names):
            return local
    tm = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = [t for t in names if t not in tm.all_tasks]
    if unknown:
        where = f" (looked in lm-eval's tasks and {include_path})" if include_path else ""
        raise AmoebaError(f"unknown lm-eval task(s) {', '.join(unknown)}{where}")
    return tm


def subnet_model(loaded: LoadedModel, strategy: Strategy | None, shape: SubnetShape) -> LlamaForCausalLM:
    """The physical subnet of ``shape`` (adapters folded when ``loaded`` has them): a plain
    ``LlamaForCausalLM``, the model ``amoeba export --format hf`` writes."""
    from amoeba_core.smol import merge_for_shape

    shape.check_fits(loaded.geometry.n_layers)
    if shape.narrowed and strategy is None:
        raise AmoebaError(f"shape {shape.grid_key} narrows the width: task evaluation needs a strategy")
    return merge_for_shape(loaded.model, shape, strategy).eval()


def evaluate_model(
    model: Any, tokenizer: Any, tasks: Sequence[str], *, limit: int | None = None,
    include_path: str | Path | None = None, num_fewshot: int | None = None, batch_size: int = 1,
    offline: bool = False, shape_key: str = "", manager: Any = None,
) -> list[TaskScore]:
    """Run lm-eval ``tasks`` on an in-memory HF causal LM (``HFLM(pretrained=model)``).

    ``manager``: a :func:`task_manager` built beforehand (to check names before loading a model)."""
    if offline:
        set_offline()
    if limit is not None and limit < 1:
        raise AmoebaError(f"--limit must be >= 1, got {limit}")
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    names = parse_tasks(tasks)
    tm = manager if manager is not None else task_manager(names, include_path)
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                  log_samples=True, bootstrap_iters=1000)
    return parse_results(out, shape_key)


def parse_results(out: dict[str, Any], shape_key: str = "") -> list[TaskScore]:
    """:class:`TaskScore` rows from ``lm_eval.simple_evaluate``'s result (``log_samples=True``)."""
    samples: dict[str, list[dict[str, Any]]] = out.get("samples") or {}
    groups: dict[str, list[str]] = out.get("group_subtasks") or {}

    def leaves(task: str) -> list[str]:
        subs = groups.get(task)
        if not subs:
            return [task]
        return [leaf for s in subs for leaf in leaves(s)]

    rows: list[TaskScore] = []
    for task, res in out["results"].items():
        for key, value in res.items():
            if "," not in key or key.split(",")[0].endswith("_stderr") or key.startswith(_SKIP_KEYS):
                continue
            metric, filt = key.split(",", 1)
            if not isinstance(value, (int, float)):
                continue
            err = res.get(f"{metric}_stderr,{filt}")
            per, ids = [], []
            for leaf in leaves(task):
                for s in samples.get(leaf, []):
                    if s.get("filter", filt) == filt and isinstance(s.get(metric), (int, float, bool)):
                        per.append(float(s[metric]))
                        ids.append(f"{leaf}/{s['doc_id']}")
            interval = None
            if per and abs(sum(per) / len(per) - float(value)) < 1e-9:
                interval = mean_ci(per)
            elif per:
                log.info("%s %s: reported value is not the item mean (a weighted group); no item bootstrap", task, metric)
            rows.append(TaskScore(task, metric, filt, float(value),
                                  float(err) if isinstance(err, (int, float)) else None, interval,
                                  tuple(per) if interval is not None else (), tuple(ids) if interval is not None else (),
                                  len(per) if per else int(res.get("sample_len") or 0), shape_key))
    return rows


def evaluate_tasks(
    loaded: LoadedModel, strategy: Strategy | None, shape: SubnetShape, tasks: Sequence[str], *,
    limit: int | None = None, include_path: str | Path | None = None, num_fewshot: int | None = None,
    batch_size: int = 1, offline: bool = False, manager: Any = None,
) -> list[TaskScore]:
    """lm-eval ``tasks`` on the physical subnet of ``shape`` (every metric lm-eval reports)."""
    model = subnet_model(loaded, strategy, shape)
    return evaluate_model(model, loaded.tokenizer, tasks, limit=limit, include_path=include_path,
                          num_fewshot=num_fewshot, batch_size=batch_size, offline=offline, shape_key=shape.key,
                          manager=manager)


def pick(rows: Sequence[TaskScore], task: str, metric: str | None = None) -> TaskScore:
    """The row of ``task`` for ``metric`` (default: the first of :data:`PREFERRED_METRICS` present)."""
    mine = [r for r in rows if r.task == task]
    if not mine:
        raise AmoebaError(f"lm-eval returned no result for task {task!r}")
    for m in ([metric] if metric else list(PREFERRED_METRICS)) + ([] if metric else [mine[0].metric]):
        for r in mine:
            if r.metric == m:
                return r
    raise AmoebaError(f"task {task!r} has no metric {metric!r}; it reports {', '.join(sorted({r.metric for r in mine}))}")


def task_accuracy(
    loaded: LoadedModel, strategy: Strategy | None, shape: SubnetShape, task: str, limit: int | None = None,
    adapters: str | Path | None = None, *, metric: str | None = None, include_path: str | Path | None = None,
    num_fewshot: int | None = None, offline: bool = False,
) -> tuple[Interval, list[float]]:
    """Accuracy of ``shape`` on one lm-eval task, for search objectives (``--objective task:NAME``).

    Returns the 90% interval (value = lm-eval's number; our bootstrap over items) and the
    per-item values (1.0/0.0 for accuracies) in lm-eval's item order. ``adapters``: a Stage 2
    output folder to install first (when ``loaded`` does not have it already). A task whose
    items lm-eval does not expose (a weighted group) gets a point interval (lo = hi = value).
    """
    if adapters is not None and loaded.adapters is None:
        from amoeba_core.finetune import apply_adapters

        loaded = apply_adapters(loaded, strategy, adapters)
    row = pick(evaluate_tasks(loaded, strategy, shape, [task], limit=limit, include_path=include_path,
                              num_fewshot=num_fewshot, offline=offline), task, metric)
    interval = row.interval or Interval(row.value, row.value, row.value, row.n)
    return interval, list(row.per_item)


def compare_items(a: TaskScore, b: TaskScore) -> PairedDiff:
    """Paired 90% interval of ``a - b`` over the same items (two shapes, one task and metric)."""
    if not a.per_item or not b.per_item:
        raise AmoebaError(f"{a.task}: no per-item values to pair")
    if a.doc_ids != b.doc_ids or (a.task, a.metric, a.filter) != (b.task, b.metric, b.filter):
        raise AmoebaError(f"{a.task} {a.metric}: the two scores are not on the same items")
    return paired_diff(a.per_item, b.per_item)
