"""`amoeba search | query | plot` (thin wrappers; heavy imports inside the functions). ``COMMANDS`` also
lists `serve | push` from :mod:`search.serve_cli`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from amoeba_core.errors import AmoebaError
from search.serve_cli import ROOT as _ROOT
from search.serve_cli import RUN as _RUN
from search.serve_cli import push, serve  # `amoeba serve | push` live there

if TYPE_CHECKING:
    from search.latency import LatencyObjective

_PHASE = typer.Option("decode", help="decode (ms/token), prefill (ms/prompt) or e2e (prefill + gen_len decodes).")


def parse_budget(text: str) -> float:
    """``40ms``, ``40 ms``, ``0.04s`` or ``40`` -> milliseconds (``80%``: :func:`search.query.parse_share`)."""
    t = str(text).strip().lower().replace(" ", "")
    if t.endswith("%"):
        raise AmoebaError(f"a budget as a share of the full model ({text!r}) needs a latency table to resolve it")
    scale = 1.0
    if t.endswith("ms"):
        t = t[:-2]
    elif t.endswith("s"):
        t, scale = t[:-1], 1000.0
    try:
        v = float(t) * scale
    except ValueError:
        raise AmoebaError(f"budget must be a time such as 40ms or 0.04s, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise AmoebaError(f"budget must be a positive time, got {text!r}")
    return v


def _widths(text: Optional[str]) -> Optional[tuple[float, ...]]:
    if not text:
        return None
    from amoeba_core.shape import parse_widths
    from search.space import fine_widths

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise AmoebaError(f"--widths LO:HI:STEP expected, got {text!r}")
        try:
            lo, hi, step = (float(eval_fraction(p)) for p in parts)
        except ValueError:
            raise AmoebaError(f"--widths LO:HI:STEP needs numbers, got {text!r}") from None
        return fine_widths(lo, hi, step)
    return parse_widths(text)


def eval_fraction(text: str) -> float:
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    return float(text)


def search(
    strategy: Path = typer.Option(..., help="Stage 1 strategy YAML (`amoeba select --out ...`)."),
    device: str = typer.Option("cpu-host", help="Device with a latency table."),
    flow: str = typer.Option("pytorch", help="Deployment flow of the latency table."),
    method: str = typer.Option("hierarchical", help="hierarchical | nsga2 | tpe | random."),
    trials: int = typer.Option(60, min=1, help="Trials (Optuna methods) / max evaluations (hierarchical)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage: sqlite:///..., postgresql://..., journal:PATH."),
    budget_ms: Optional[float] = typer.Option(None, "--budget-ms", help="Latency budget (hard constraint)."),
    run: Path = _RUN,
    model: Optional[str] = typer.Option(None, help="Latency-table model name (default: from the strategy)."),
    source: Optional[str] = typer.Option(None, help="Model to evaluate (default: the strategy's source)."),
    adapters: Optional[Path] = typer.Option(None, help="Stage 2 adapters (`amoeba finetune --out`) to evaluate with."),
    widths: Optional[str] = typer.Option(None, help="Width axis: '1,0.75' or LO:HI:STEP e.g. 0.5:1:1/32."),
    attn_widths: Optional[str] = typer.Option(
        None, help="Attention widths as an axis of their own, e.g. 1,0.667 for SmolLM2 (whole heads the KV groups "
        "allow): the space becomes depth x attention width x MLP width (--widths), shapes like d24-a0.667-m0.750."),
    depths: Optional[str] = typer.Option(None, help="Only these depths of the strategy, e.g. 15,16,17 (default: all)."),
    phase: str = _PHASE,
    prompt_len: Optional[int] = typer.Option(None, help="Prompt length of the latency rows (default: table's)."),
    gen_len: int = typer.Option(128, help="Generated tokens for --phase e2e."),
    seed: int = typer.Option(0, help="Sampler seed."),
    split: str = typer.Option("val", help="Held-out text split for accuracy."),
    seq_len: int = typer.Option(256, help="Evaluation window length (tokens)."),
    max_windows: int = typer.Option(8, help="Evaluation windows per shape."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: derived from the settings)."),
    rungs: Optional[str] = typer.Option(None, help="Multi-fidelity: windows per rung, cheapest first, e.g. 4,32 (the "
                                                   "last is --max-windows): shapes are screened cheaply; only those whose "
                                                   "accuracy interval reaches the front are scored at the full budget."),
    variant: Optional[str] = typer.Option(None, help="Latency-table variant (weight type/build, e.g. q4_0); default: "
                                                     "the table's first, named in the output."),
    objective: str = typer.Option("top1", help="top1 (held-out next-token accuracy) or task:NAME (an lm-eval task, "
                                               "as `amoeba eval --task NAME`)."),
    task_path: Optional[Path] = typer.Option(None, "--task-path", help="Folder of local lm-eval task YAMLs "
                                                                      "(include_path; runs offline)."),
    task_limit: Optional[int] = typer.Option(None, "--task-limit", help="Items per task (lm-eval --limit)."),
    root: Optional[Path] = _ROOT,
    as_json: bool = typer.Option(False, "--json", help="Print the stored front as JSON (the HTTP service's "
                                                      "fields); the table then goes to stderr."),
) -> None:
    """Search the accuracy-latency front of a strategy on one device/flow; stores every evaluation."""
    from rich.console import Console
    from rich.table import Table

    from search.objectives import AccuracyTable, MultiFidelityAccuracy
    from search.latency import LatencyObjective
    from search.pareto import pareto_indices
    from search.problem import SearchProblem
    from search.query import is_pairing_reference, write_meta
    from search.space import SearchSpace
    from search.store import open_storage, storage_url, study_name

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if method not in ("hierarchical", "nsga2", "tpe", "random"):
        raise AmoebaError(f"unknown method {method!r}; known: hierarchical, nsga2, tpe, random")
    from amoeba_core.shape import parse_ints, parse_widths

    space = SearchSpace.from_strategy(strategy, model=model, widths=_widths(widths),
                                      attn_widths=parse_widths(attn_widths) if attn_widths else None,
                                      depths=parse_ints(depths) if depths else None)
    latency = LatencyObjective(device, flow, space.model, phase, prompt_len, gen_len, root, variant=variant)
    acc_url = storage if storage and storage.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql") else None
    table = AccuracyTable(run, url=acc_url)  # in the study's database when that is SQL, else the run's store
    accuracy = _accuracy_objective(objective, rungs, strategy, table, source, split, seq_len, max_windows, adapters,
                                   task_path, task_limit)
    space = dataclasses.replace(space, fingerprint=accuracy.fingerprint)
    from profiler.store import redact

    write_meta(run, space, {"adapters": str(adapters) if adapters else None, "objective": objective,
                            "accuracy_store": redact(acc_url) if acc_url else None,
                            "variant": latency.variant, "rungs": list(accuracy.rungs) if isinstance(accuracy, MultiFidelityAccuracy) else None})
    problem = SearchProblem(space, accuracy, latency, budget_ms)
    store = open_storage(storage, run)
    name = study or study_name(space.model, method, device, flow, phase, budget_ms)
    if method == "hierarchical":
        from search.hierarchical import run_hierarchical

        run_hierarchical(problem, max_evaluations=trials, storage=store, study_name=name)
    else:
        from search.evolutionary import run_optuna

        run_optuna(problem, method, trials, seed, store, name)
    console = Console(stderr=as_json)
    evs = problem.history
    front = pareto_indices([e.latency_ms for e in evs], [e.accuracy for e in evs])
    where = f"{device}/{flow} [{latency.variant}]" if latency.variant else f"{device}/{flow}"
    t = Table(title=f"front of {len(evs)} evaluated shapes ({space.size} in the space), {where} {phase}")
    for c in ("shape", "latency ms [90%]", "source", "top-1 acc [90%]", "ppl"):
        t.add_column(c)
    for i in front:
        e, lat = evs[i], evs[i].latency
        ref = is_pairing_reference(lat.source, lat.ms, lat.lo_ms, lat.hi_ms)
        t.add_row(e.shape.grid_key, f"{lat.ms:.3f}" if ref else _ci(lat.ms, lat.lo_ms, lat.hi_ms, 3),
                  lat.source + (", the pairing's reference" if ref else "")
                  + (", extrapolated" if lat.extrapolated else ""),
                  _ci(e.accuracy, e.accuracy_lo, e.accuracy_hi, 4), "" if e.ppl is None else f"{e.ppl:.2f}")
    console.print(t)
    note = _variant_note(latency, variant)
    if note:
        console.print(note, highlight=False)
    if problem.fidelity is not None and len(problem.fidelity.rungs) > 1:
        console.print(f"multi-fidelity: {len(problem.rung_of)} shapes screened (rungs {list(problem.fidelity.rungs)} "
                      f"windows x {seq_len} tokens), {len(evs)} scored at the full budget; {problem.tokens} tokens "
                      f"evaluated", highlight=False)
    console.print(f"new accuracy evaluations: {accuracy.n_evaluated}; study {name!r} in {storage_url(storage, run)}",
                  highlight=False)
    console.print(f"next: amoeba query --run {run} --device {device} --flow {flow} --budget <ms, or a share such as "
                  f"75%> --phase {phase}",
                  highlight=False)
    if as_json:
        from search.json_out import front_json

        print(front_json(run, root, device, flow, phase, variant, prompt_len))


def _ci(value: float, lo: Optional[float], hi: Optional[float], digits: int) -> str:
    if lo is None or hi is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _variant_note(latency: LatencyObjective, asked: Optional[str]) -> Optional[str]:
    """Which variant was taken when the table has several and none was asked for."""
    taken = latency.variant
    variants = list(latency.parts[0][0].table.variants)
    if asked is not None or taken is None or len(variants) < 2:
        return None
    others = ", ".join(v for v in variants if v != taken)
    return f"latency variant {taken} taken (the table's first of {len(variants)}); others: {others} (--variant)"


def _accuracy_objective(objective: str, rungs: Optional[str], strategy: Path, table: object, source: Optional[str],
                        split: str, seq_len: int, max_windows: int, adapters: Optional[Path],
                        task_path: Optional[Path] = None, task_limit: Optional[int] = None) -> object:
    """top1 (single or multi-fidelity) or an lm-eval task as the accuracy of a shape."""
    from search.objectives import AccuracyObjective, MultiFidelityAccuracy

    if objective.startswith("task:"):
        if rungs:
            raise AmoebaError("--rungs applies to --objective top1 (windows of held-out text), not to a task")
        return _task_objective(objective[5:], strategy, table, source, adapters, task_path, task_limit)
    if objective != "top1":
        raise AmoebaError(f"--objective must be top1 or task:NAME, got {objective!r}")
    if rungs:
        from amoeba_core.shape import parse_ints

        r = parse_ints(rungs)
        if max(r) != max_windows:
            raise AmoebaError(f"--rungs must end at the full budget --max-windows {max_windows}, got {rungs}")
        return MultiFidelityAccuracy.from_stage1(strategy, table, source, split, seq_len, max_windows, r,  # type: ignore[arg-type]
                                                 adapters)
    return AccuracyObjective.from_stage1(strategy, table, source, split, seq_len, max_windows, adapters)  # type: ignore[arg-type]


def _task_objective(task: str, strategy: Path, table: object, source: Optional[str], adapters: Optional[Path],
                    task_path: Optional[Path] = None, task_limit: Optional[int] = None) -> object:
    """Accuracy of a shape = lm-eval task ``task`` on its physical subnet (:func:`amoeba_core.tasks.task_accuracy`),
    with lm-eval's number and our 90% bootstrap over items; cached per shape like top-1."""
    import os
    from types import SimpleNamespace

    try:
        from amoeba_core import tasks
    except ImportError:
        raise AmoebaError("--objective task:NAME needs amoeba_core.tasks (the lm-eval backend)") from None
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy
    from search.objectives import AccuracyObjective

    if not task.strip():
        raise AmoebaError("--objective task:NAME needs a task name, e.g. task:arc_easy")
    st = Strategy.load(strategy)
    loaded = load_model(source or st.model_source)
    if adapters is not None:
        from amoeba_core.finetune import apply_adapters

        loaded = apply_adapters(loaded, st, adapters)
    offline = task_path is not None or os.environ.get("HF_HUB_OFFLINE") == "1"

    def score(shape: object) -> object:
        iv, items = tasks.task_accuracy(loaded, st, shape, task, task_limit, include_path=task_path,  # type: ignore[arg-type]
                                        offline=offline)
        return SimpleNamespace(top1_acc=iv.value, top1_lo=iv.lo, top1_hi=iv.hi, ppl=None, nll=None,
                               n_tokens=len(items) or None, seconds=None)

    ctx = f"{loaded.score_id}|{st.width_id}|task:{task}|limit={task_limit}|{task_path.name if task_path else 'hub'}"
    return AccuracyObjective(score, table, ctx)  # type: ignore[arg-type]


def query(
    device: str = typer.Option(..., help="Device name."),
    flow: str = typer.Option(..., help="Deployment flow."),
    budget: str = typer.Option(..., help="Latency budget, e.g. 40ms or 0.04s, or a share of the full model's "
                                         "latency on this device/flow, e.g. 80%."),
    phase: str = _PHASE,
    variant: Optional[str] = typer.Option(None, help="Table variant (weight type/build, e.g. q4_0); default: "
                                                     "the table's first, named in the answer."),
    run: Path = _RUN,
    root: Optional[Path] = _ROOT,
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON (the HTTP service's fields)."),
) -> None:
    """Best evaluated shape within a latency budget (exact over the stored shapes)."""
    from rich.console import Console

    from amoeba_core.shape import parse_shape
    from search.query import QueryIndex, describe_latency, parse_share

    index = QueryIndex(run, root)
    share = parse_share(budget)
    budget_ms, how = (parse_budget(budget), None) if share is None else index.share_budget(share, device, flow, phase,
                                                                                            variant)
    ans = index.best(device, flow, budget_ms, phase, variant)
    if as_json:
        from search.json_out import query_json

        print(query_json(ans))
        if not ans.feasible:
            raise typer.Exit(1)
        return
    console = Console(markup=False, highlight=False)
    if how:
        console.print(f"budget     {how}", highlight=False)
    where = f"{device}/{flow}" + (f" [{ans.variant}]" if ans.variant else "")
    if ans.variant_note:
        console.print(f"note       {ans.variant_note}", highlight=False)
    if not ans.feasible:
        f = ans.fastest
        console.print(f"infeasible: {ans.message}", highlight=False)
        console.print(f"fastest: {parse_shape(f.key).grid_key} {f.latency_ms:.3f} ms ({describe_latency(f)}), "
                      f"top-1 {f.accuracy:.4f}", highlight=False)
        raise typer.Exit(1)
    p = ans.shape
    assert p is not None
    console.print(f"shape      {parse_shape(p.key).grid_key}  ({p.key})", highlight=False)
    console.print(f"latency    {p.latency_ms:.3f} ms per {'token' if phase == 'decode' else phase} "
                  f"[{describe_latency(p)}] on {where}", highlight=False)
    pred = "n/a" if p.predicted_ms is None else f"{p.predicted_ms:.3f} ms"
    meas = "— (this shape was not timed)" if p.measured_ms is None else f"{p.measured_ms:.3f} ms"
    console.print(f"predicted  {pred};  measured {meas}", highlight=False)
    ppl = "" if p.ppl is None else f", perplexity {p.ppl:.2f}"
    ci = "" if p.accuracy_lo is None or p.accuracy_hi is None else f" [{p.accuracy_lo:.4f}, {p.accuracy_hi:.4f}]"
    console.print(f"accuracy   top-1 {p.accuracy:.4f}{ci}{ppl}", highlight=False)
    console.print(f"export     {ans.export_command}", highlight=False)


def plot(
    run: Path = _RUN,
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the run folder)."),
    phase: str = _PHASE,
    budget: Optional[str] = typer.Option(None, help="Draw a budget line, e.g. 40ms, or 80% of the full model's "
                                                    "latency on each device/flow."),
    device: Optional[list[str]] = typer.Option(None, help="Only these devices (repeatable)."),
    flow: Optional[list[str]] = typer.Option(None, "--flow", help="Only these flows (repeatable)."),
    variant: Optional[str] = typer.Option(None, help="Latency-table variant to draw (default: the table's first, "
                                                     "named in the title with the others)."),
    compare: Optional[list[Path]] = typer.Option(None, "--compare", help="Another run whose front is drawn on the "
                                                                         "same axes, e.g. the Stage 2 search "
                                                                         "(`amoeba search --adapters`); repeatable."),
    root: Optional[Path] = _ROOT,
) -> None:
    """One accuracy-latency PNG per device/flow: front (90% intervals), evaluated shapes, uniform-shrink baselines."""
    from rich.console import Console

    from search.plot import plot_fronts
    from search.query import parse_share

    # a share such as 80% is resolved per device/flow (each table's own full model)
    line = None if not budget else budget.strip() if parse_share(budget) is not None else parse_budget(budget)
    paths = plot_fronts(run, out, phase, line, device or None, root, variant,
                        compare or (), flow or None)
    if not paths:
        raise AmoebaError(f"no latency table matches the model of {run}" + (f" with variant {variant!r}" if variant
                                                                            else "") + "; see `amoeba devices`")
    for p in paths:
        Console().print(str(p), highlight=False)


COMMANDS = {"search": search, "query": query, "plot": plot, "serve": serve, "push": push}
