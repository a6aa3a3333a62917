"""Accuracy-latency pictures: one PNG per device/flow (compute first, draw second).

Each figure shows every evaluated shape, the Pareto front, the uniform-shrink baselines that
were evaluated (depth-only shrinking at full width, width-only shrinking at full depth from the
strategy's shapes, and drop-last-layers shapes when their accuracy is stored as baselines), and
the latency budget line if one is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from search.objectives import LatencyObjective
from search.query import Point, QueryIndex

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


def front_data(index: QueryIndex, device: str, flow: str, phase: str = "decode",
               budget_ms: float | None = None) -> FrontPlotData:
    pts = index.points(device, flow, phase)
    wmax, dmax = max(index.space.widths), max(index.space.depths)
    depth_only = sorted((p for p in pts if p.width == wmax), key=lambda p: p.latency_ms)
    width_only = sorted((p for p in pts if p.depth == dmax), key=lambda p: p.latency_ms)
    drop_last: list[tuple[float, float]] = []
    if index.baselines:
        lat: LatencyObjective = index.latency_objective(device, flow, phase)
        drop_last = sorted((lat.at(r.depth, r.width).ms, r.top1_acc) for r in index.baselines)
    return FrontPlotData(device, flow, phase, index.model, pts, index.front(device, flow, phase), depth_only,
                         width_only, drop_last, budget_ms, _strategy_label(index))


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
    ax.scatter([p.latency_ms for p in data.front], [p.accuracy for p in data.front], s=28, c="tab:blue",
               label=f"Pareto front ({len(data.front)})", zorder=4)
    measured = [p for p in data.front if p.latency_source == "measured"]
    if measured:
        ax.scatter([p.latency_ms for p in measured], [p.accuracy for p in measured], s=70, facecolors="none",
                   edgecolors="k", label="latency measured", zorder=5)
    if data.budget_ms is not None:
        ax.axvline(data.budget_ms, c="k", ls="-.", lw=1, label=f"budget {data.budget_ms:g} ms")
    ax.set_xlabel(f"{data.phase} latency (ms) on {data.device} / {data.flow}")
    ax.set_ylabel("next-token top-1 accuracy (held-out)")
    ax.set_title(f"{data.model}: accuracy vs latency" + (f"\nstrategy {data.strategy}" if data.strategy else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_fronts(run_dir: Path | str, out_dir: Path | str | None = None, phase: str = "decode",
                budget_ms: float | None = None, devices: list[str] | None = None, root: Path | None = None) -> list[Path]:
    """One PNG per device/flow with a table for the run's model; returns the paths written."""
    index = QueryIndex(run_dir, root)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir)
    paths = []
    for device, flows in index.tables().items():
        if devices and device not in devices:
            continue
        for flow in flows:
            data = front_data(index, device, flow, phase, budget_ms)
            paths.append(draw(data, out_dir / f"front-{device}-{flow}-{phase}.png"))
    return paths
