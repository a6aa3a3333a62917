"""Accuracy-latency pictures: one PNG per device/flow (compute first, draw second).

Each figure shows every evaluated shape, the Pareto front, the uniform-shrink baselines that
were evaluated (depth-only shrinking at full width, width-only shrinking at full depth from the
strategy's shapes, and drop-last-layers shapes when their accuracy is stored as baselines), and
the latency budget line if one is given.

Front points carry error bars: the accuracy's 90% interval (bootstrap over evaluation windows)
and the latency's 90% interval from the profiler; a latency the predictor extrapolated outside
the measured widths/depths is marked. A table with several variants (weight types, builds) is
drawn for one variant, named in the title (``variant`` or the table's first). Other runs
(``compare``, e.g. the search of the Stage 2 model, ``amoeba search --adapters``) add their
fronts to the same axes, so the Stage 1 and Stage 2 fronts can be read side by side.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import parse_shape
from search.latency import LatencyObjective
from search.query import Point, QueryIndex, parse_share

log = logging.getLogger(__name__)


class FrontPlotData(NamedTuple):
    device: str
    flow: str
    phase: str
    model: str
    points: list[Point]
    front: list[Point]
    depth_only: list[Point]  # full width, every evaluated depth
    width_only: list[Point]  # full depth, every evaluated width
    drop_last: list[tuple[float, float]]  # (latency_ms, accuracy) of drop-last-layers baselines
    budget_ms: float | None
    strategy: str | None = None
    variant: str | None = None
    variant_note: str | None = None
    label: str = "Pareto front"
    others: tuple[tuple[str, list[Point]], ...] = ()  # (label, front) of compared runs
    budget_label: str | None = None  # the legend's words for the budget line (a share: how it was resolved)


def front_data(index: QueryIndex, device: str, flow: str, phase: str = "decode",
               budget_ms: float | str | None = None, variant: str | None = None,
               compare: Sequence[tuple[str, QueryIndex]] = (), label: str = "Pareto front") -> FrontPlotData:
    """``budget_ms``: milliseconds, or a share of the full model's latency on this table such as ``"80%"``."""
    pts = _points(index, device, flow, phase, variant)
    budget_label = None
    if isinstance(budget_ms, str):
        share = parse_share(budget_ms)
        if share is None:
            raise AmoebaError(f"a budget given as text must be a share such as 80%, got {budget_ms!r}")
        budget_ms = index.share_budget(share, device, flow, phase, variant)[0]
        budget_label = f"budget {share * 100:g}% of {index.full_shape_key()} = {budget_ms:.3g} ms"
    wmax, dmax = max(index.space.widths), max(index.space.depths)
    amax = max(index.space.attn_widths, default=None)  # separate attention axis: full = widest of both
    depth_only = sorted((p for p in pts if p.width == wmax and parse_shape(p.key).attn_width == amax),
                        key=lambda p: p.latency_ms)
    width_only = sorted((p for p in pts if p.depth == dmax), key=lambda p: p.latency_ms)
    drop_last: list[tuple[float, float]] = []
    taken, note = _variant(index, device, flow, phase, variant)
    if index.baselines:
        lat: LatencyObjective = _latency(index, device, flow, phase, taken)
        drop_last = sorted((lat.at(r.depth, r.width).ms, r.top1_acc) for r in index.baselines)
    others = []
    for name, other in compare:
        try:
            others.append((name, _front(other, device, flow, phase, taken)))
        except AmoebaError as e:
            log.warning("%s has no front on %s/%s: %s", name, device, flow, e)
    return FrontPlotData(device, flow, phase, index.model, pts, _front(index, device, flow, phase, variant), depth_only,
                         width_only, drop_last, budget_ms, _strategy_label(index), taken, note, label, tuple(others),
                         budget_label)


def _points(index: QueryIndex, device: str, flow: str, phase: str, variant: str | None) -> list[Point]:
    return index.points(device, flow, phase, variant) if variant is not None else index.points(device, flow, phase)


def _front(index: QueryIndex, device: str, flow: str, phase: str, variant: str | None) -> list[Point]:
    return index.front(device, flow, phase, variant) if variant is not None else index.front(device, flow, phase)


def _latency(index: QueryIndex, device: str, flow: str, phase: str, variant: str | None) -> LatencyObjective:
    if variant is None:
        return index.latency_objective(device, flow, phase)
    return index.latency_objective(device, flow, phase, variant)


def _variant(index: QueryIndex, device: str, flow: str, phase: str, variant: str | None) -> tuple[str | None, str | None]:
    """(variant drawn, note naming the others when several exist and none was asked for)."""
    ix = index.index(device, flow, phase, variant) if variant is not None else index.index(device, flow, phase)
    taken = ix.variant or variant
    variants = ix.variants
    if variant is not None or taken is None or len(variants) < 2:
        return taken, None
    others = ", ".join(v for v in variants if v != taken)
    return taken, f"variant {taken} drawn (the table's first of {len(variants)}); others: {others} (choose with --variant)"


def _strategy_label(index: QueryIndex) -> str | None:
    path = index.space.strategy_path
    if not path:
        return None
    try:
        import yaml

        meta = yaml.safe_load(Path(path).read_text())
        return f"{Path(path).name} (depth: {meta.get('metric', '?')}, width: {meta.get('width_metric', '?')})"
    except (OSError, ValueError, AttributeError):
        return Path(path).name


def draw(data: FrontPlotData, out: Path | str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    ax.scatter([p.latency_ms for p in data.points], [p.accuracy for p in data.points], s=12, c="0.7",
               label=f"evaluated shapes ({len(data.points)})", zorder=1)
    if data.depth_only:
        ax.plot([p.latency_ms for p in data.depth_only], [p.accuracy for p in data.depth_only], "s--", ms=4,
                c="tab:orange", lw=1, label="depth only (full width)", zorder=2)
    if len(data.width_only) > 1:
        ax.plot([p.latency_ms for p in data.width_only], [p.accuracy for p in data.width_only], "^--", ms=4,
                c="tab:green", lw=1, label="width only (full depth)", zorder=2)
    if data.drop_last:
        ax.plot([x for x, _ in data.drop_last], [y for _, y in data.drop_last], "x:", c="tab:red", lw=1,
                label="drop last layers (uniform)", zorder=2)
    ax.step([p.latency_ms for p in data.front], [p.accuracy for p in data.front], where="post", c="tab:blue",
            lw=1.5, zorder=3)
    _errorbars(ax, data.front, "tab:blue", f"{data.label} ({len(data.front)}), 90% intervals", zorder=4)
    for (name, front), color in zip(data.others, ("tab:purple", "tab:brown", "tab:olive", "tab:cyan")):
        if not front:
            continue
        ax.step([p.latency_ms for p in front], [p.accuracy for p in front], where="post", c=color, lw=1.5, zorder=3)
        _errorbars(ax, front, color, f"{name} ({len(front)})", zorder=4)
    measured = [p for p in data.front if p.latency_source == "measured"]
    if measured:
        ax.scatter([p.latency_ms for p in measured], [p.accuracy for p in measured], s=70, facecolors="none",
                   edgecolors="k", label="latency measured", zorder=5)
    extrapolated = [p for f in (data.front, *(f for _, f in data.others)) for p in f if p.extrapolated]
    if extrapolated:
        ax.scatter([p.latency_ms for p in extrapolated], [p.accuracy for p in extrapolated], s=90, marker="D",
                   facecolors="none", edgecolors="tab:red", label="latency extrapolated", zorder=5)
    if data.budget_ms is not None:
        ax.axvline(data.budget_ms, c="k", ls="-.", lw=1, label=data.budget_label or f"budget {data.budget_ms:g} ms")
    variant = f" [{data.variant}]" if data.variant else ""
    ax.set_xlabel(f"{data.phase} latency (ms) on {data.device} / {data.flow}{variant}")
    ax.set_ylabel("next-token top-1 accuracy (held-out)")
    title = f"{data.model}: accuracy vs latency" + (f"\nstrategy {data.strategy}" if data.strategy else "")
    if data.variant_note:
        title += f"\n{data.variant_note}"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")  # fronts rise from lower left to upper right
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _errorbars(ax: Any, pts: list[Point], color: str, label: str, zorder: int) -> None:
    """Front points with the accuracy's and the latency's 90% intervals where known."""
    import numpy as np

    x = np.array([p.latency_ms for p in pts])
    y = np.array([p.accuracy for p in pts])

    def err(vals: np.ndarray, lo: list[Any], hi: list[Any]) -> np.ndarray:
        low = np.array([v - (lv if lv is not None else v) for v, lv in zip(vals, lo)])
        high = np.array([(hv if hv is not None else v) - v for v, hv in zip(vals, hi)])
        return np.vstack([np.clip(low, 0, None), np.clip(high, 0, None)])

    yerr = err(y, [p.accuracy_lo for p in pts], [p.accuracy_hi for p in pts])
    xerr = err(x, [p.lo_ms for p in pts], [p.hi_ms for p in pts])
    ax.errorbar(x, y, yerr=yerr if yerr.any() else None, xerr=xerr if xerr.any() else None, fmt="o", ms=5, c=color,
                ecolor=color, elinewidth=0.8, capsize=2, label=label, zorder=zorder)


def run_label(run_dir: Path | str) -> str:
    """How a run is named in a legend: Stage 2 when its search used adapters, else Stage 1."""
    from search.query import read_meta

    try:
        meta = read_meta(run_dir)
    except AmoebaError:
        return Path(run_dir).name
    adapters = meta.get("adapters")
    stage = f"Stage 2 front (adapters {Path(str(adapters)).name})" if adapters else "Stage 1 front"
    return f"{stage}: {Path(run_dir).name}"


def plot_fronts(run_dir: Path | str, out_dir: Path | str | None = None, phase: str = "decode",
                budget_ms: float | str | None = None, devices: list[str] | None = None, root: Path | None = None,
                variant: str | None = None, compare: Sequence[Path | str] = (),
                flows: Sequence[str] | None = None) -> list[Path]:
    """One PNG per device/flow with a table for the run's model; returns the paths written.

    ``compare``: other run folders (same model) whose fronts are drawn on the same axes. With
    ``variant``, flows whose table lacks it are skipped (said in the log)."""
    index = QueryIndex(run_dir, root)
    others = [(run_label(c), QueryIndex(c, root)) for c in compare]
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir)
    paths = []
    label = run_label(run_dir) if compare else "Pareto front"
    for device, flows_of in index.tables().items():
        if devices and device not in devices:
            continue
        for flow in flows_of:
            if flows and flow not in flows:
                continue
            try:
                data = front_data(index, device, flow, phase, budget_ms, variant, others, label)
            except AmoebaError as e:
                if variant is None:
                    raise
                log.warning("%s/%s: %s; skipped", device, flow, e)
                continue
            suffix = f"-{variant}" if variant else ""
            paths.append(draw(data, out_dir / f"front-{device}-{flow}-{phase}{suffix}.png"))
    return paths
