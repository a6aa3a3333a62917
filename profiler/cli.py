"""`amoeba devices | profile | predict | table show/export` (thin wrappers; heavy imports inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from amoeba_core.errors import AmoebaError
from profiler.cache_cli import cache_app

table_app = typer.Typer(help="Show or export a latency table.", no_args_is_help=True)

_ROOT = typer.Option(None, "--root", help="Profiles folder (default: $AMOEBA_PROFILES or ./device_profiles).")


def _console():  # noqa: ANN202 - rich Console
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def devices(root: Optional[Path] = _ROOT) -> None:
    """List known devices (spec, provenance) and their latency tables."""
    from profiler.device import load_device
    from profiler.lookup import list_devices, list_tables

    console = _console()
    tables = list_tables(root)
    names = list_devices(root)
    if not names:
        console.print("no devices yet: `amoeba profile --device cpu-host ...` detects this machine")
    for name in names:
        s = load_device(name, root)
        peaks = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in s.peak_flops.items())
        kind = "roofline-only (spec sheet, never measured)" if s.roofline_only else "measured here"
        tabs = ", ".join(f"{x.flow}/{x.model}" for x in tables if x.device == name) or "none"
        console.print(
            f"[bold]{name}[/bold] ({s.kind}, {kind}): {s.memory_bandwidth_gbs:g} GB/s, peak TFLOP/s {peaks}, "
            f"memory {s.memory_gb or 0:g} GB; tables: {tabs}",
            highlight=False,
        )
        if s.description:
            console.print(f"    {s.description}", highlight=False)


def _options(items: list[str]) -> dict:
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise AmoebaError(f"--option expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def profile(
    device: str = typer.Option("cpu-host", help="Device name (cpu-host is detected on first use)."),
    flow: str = typer.Option("pytorch", help="Deployment flow."),
    model: str = typer.Option(..., help="Geometry preset, HF folder or GGUF file."),
    depths: Optional[str] = typer.Option(None, help="Comma-separated depths (default: 1..n_layers)."),
    widths: str = typer.Option("1,0.875,0.75,0.625", help="Comma-separated width ratios in (0, 1]."),
    attn_widths: Optional[str] = typer.Option(
        None, help="Comma-separated attention widths (fractions of heads the KV-group structure allows, e.g. "
        "1,0.667,0.333 for SmolLM2): time every attention x MLP width pair (d24-a0.667-m0.750), --widths being "
        "the MLP widths."),
    phases: str = typer.Option("prefill,decode", help="prefill, decode or both."),
    prompt_len: int = typer.Option(128, help="Prompt tokens (prefill) / cached context (decode)."),
    batch: int = typer.Option(1, help="Batch size."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 (float16 on cuda); flows may accept more."),
    threads: int = typer.Option(0, help="Runtime threads (0: runtime default)."),
    sparse: bool = typer.Option(False, "--sparse", help="Time only what the predictor needs (3 depths x all widths)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Time depth 1/2/4 models and compose deeper ones."),
    repeats: Optional[int] = typer.Option(
        None, min=1, help="Time each row at most N times, with no seconds floor (default: 12 to 60 repeats, "
        "until the interval is tight); with --rounds 1 a fast, noisier profile."
    ),
    max_seconds: Optional[float] = typer.Option(None, help="Cap of timed seconds per row."),
    rounds: Optional[int] = typer.Option(
        None, help="Interleaved passes over blocks of shapes, a row pooling all its rounds (default 3)."
    ),
    min_util: Optional[float] = typer.Option(
        None, help="Contention diagnostic: rows whose median CPU use per thread is below this are reported "
        "(default 0.85; no sample is ever dropped)."
    ),
    rebuild: Optional[bool] = typer.Option(
        None, "--rebuild/--no-rebuild", help="Rebuild every model between rounds so a row's interval covers "
        "load-to-load variation (protocol paired-v2; rows of the two protocols never mix). Default: the flow's "
        "(on for ONNX Runtime and llama.cpp, off for the others)."
    ),
    redo_contended: bool = typer.Option(
        False, "--redo-contended", help="Re-time present rows whose median CPU use per thread is below --min-util."
    ),
    flow_device: str = typer.Option("cpu", help="cpu | cuda (where the flow runs)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Flow option KEY=VALUE (repeatable)."),
    few_shot: Optional[int] = typer.Option(
        None, "--few-shot", metavar="K",
        help="Measure only the K most informative shapes (3 is a good start; the reference counts as one) and "
        "transfer the rest of the grid from the lines already in the store (rows labelled 'transferred').",
    ),
    root: Optional[Path] = _ROOT,
) -> None:
    """Time a depth x width grid of a model on a device through a flow; write the LUT as it goes."""
    import dataclasses

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from amoeba_core.shape import parse_ints, parse_widths
    from profiler.measure import MeasureConfig
    from profiler.plan import make_plan, run_profile

    cfg = MeasureConfig()
    if repeats is not None:
        cfg = dataclasses.replace(cfg, warmup=min(cfg.warmup, repeats), min_repeats=min(cfg.min_repeats, repeats),
                                  max_repeats=repeats, min_seconds=0.0)
    if max_seconds is not None:
        cfg = dataclasses.replace(cfg, max_seconds=max_seconds, min_seconds=min(cfg.min_seconds, max_seconds))
    if min_util is not None:
        cfg = dataclasses.replace(cfg, min_util=min_util)
    if rounds is not None:
        if rounds < 1:
            raise AmoebaError(f"--rounds must be >= 1, got {rounds}")
        cfg = dataclasses.replace(cfg, rounds=rounds)
    if rebuild is not None:
        cfg = dataclasses.replace(cfg, rebuild=rebuild)
    plan = make_plan(
        device,
        flow,
        model,
        parse_ints(depths) if depths else None,
        parse_widths(widths),
        tuple(p.strip() for p in phases.split(",") if p.strip()),
        prompt_len,
        dtype,
        threads,
        sparse,
        per_layer,
        batch,
        cfg,
        flow_device,
        _options(option),
        redo_contended,
        attn_widths=parse_widths(attn_widths) if attn_widths else (),
    )
    console = _console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"{device}/{flow}/{plan.model}", total=len(plan.points()) * plan.measure.rounds)

        def progress(desc: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"{device}/{flow}/{plan.model} {desc}")

        if few_shot is not None:
            from profiler.transfer import few_shot as run_few_shot

            fs = run_few_shot(plan, few_shot, root, progress)
            shapes = ", ".join(f"d{d}-w{w:.3f}" for d, w in fs.measured)
            console.print(f"few-shot: {len(fs.measured)} shapes measured ({fs.timed_now} timed now: {shapes}), "
                          f"{fs.transferred} rows transferred from {len(fs.references)} lines in {fs.seconds:.1f} s "
                          f"-> {fs.table}", highlight=False)
            return
        res = run_profile(plan, root, progress)
    console.print(
        f"{res.written} rows measured, {res.skipped} already present, {res.composed} per-layer rows "
        f"composed in {res.seconds:.1f} s -> {res.table}"
    )
    if res.contended:
        console.print(
            f"[yellow]warning: {res.contended} rows had a median CPU use per thread (column 'util') below "
            f"{plan.measure.min_util:g}: other processes took the CPU, or the runtime left its threads idle "
            f"(a single-threaded runtime looks the same). Their ratios to the reference are paired, so "
            f"drift cancels; `--redo-contended` re-times them[/yellow]"
        )


def predict(
    device: str = typer.Option(..., help="Device name."),
    flow: str = typer.Option(..., help="Flow name."),
    model: str = typer.Option(..., help="Model name of the table."),
    shape: str = typer.Option(..., help="Shape, e.g. d24-w0.75."),
    phase: str = typer.Option("decode", help="prefill | decode"),
    prompt_len: Optional[int] = typer.Option(None, help="Prompt/context length (default: the table's)."),
    variant: Optional[str] = typer.Option(None, help="Table variant (dtype/quant)."),
    root: Optional[Path] = _ROOT,
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Predicted, measured and roofline latency of one shape, and their ratios."""
    from amoeba_core.shape import parse_shape
    from profiler.lookup import LatencyModel

    ref = parse_shape(shape)
    m = LatencyModel.open(device, flow, model, phase, prompt_len, variant, root)
    est = m.estimate(ref.depth, ref.width, ref.attn_width)

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def r(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

    lines = [
        f"{device}/{flow}/{model} {ref.grid_key} {phase} prompt_len={m.prompt_len} variant={m.variant}",
        f"answer:          {f(est.ms)} ms ({est.source})"
        + (f", 90% interval [{f(est.lo_ms)}, {f(est.hi_ms)}] ms" if est.lo_ms is not None else "")
        + (" EXTRAPOLATED (outside the measured depths/widths)" if est.extrapolated else ""),
        f"predicted:       {f(est.predicted_ms)} ms",
        f"measured:        {f(est.measured_ms)} ms",
        f"roofline floor:  {f(est.roofline_ms)} ms"
        + (" (roofline-only device: a spec-sheet bound, not a measurement)" if m.device.roofline_only else ""),
        f"measured/predicted: {r(est.measured_ms, est.predicted_ms)}   measured/roofline: "
        f"{r(est.measured_ms, est.roofline_ms)}   predicted/roofline: {r(est.predicted_ms, est.roofline_ms)}",
    ]
    if as_json:
        from profiler.json_out import predict_json

        print(predict_json(m, device, flow, model, ref.grid_key, phase, est))
        return
    console = _console()
    for line in lines:
        console.print(line, highlight=False)
    if m.predictor is not None and m.table is not None:
        rows = m.table.rows(phase=phase, variant=m.variant, prompt_len=m.prompt_len, batch=1, source="measured")
        rows = m.table.corrected(rows[rows["threads"] == m.threads] if m.threads is not None else rows)
        chk = m.predictor.self_check(rows)
        if chk.get("n"):
            console.print(
                f"predictor leave-one-depth-out error on {chk['n']} measured shapes: median "
                f"{100 * chk['median_abs_error']:.1f}%, max {100 * chk['max_abs_error']:.1f}%, "
                f"within 5%: {100 * chk['within_5pct']:.0f}%"
            )
        if m.predictor.is_extrapolated(ref.depth, ref.width, ref.attn_width):
            console.print("[yellow]shape outside the measured depths/widths: the prediction is extrapolated[/yellow]")


@table_app.command("show")
def table_show(
    device: str = typer.Option(..., help="Device name."),
    flow: str = typer.Option(..., help="Flow name."),
    model: str = typer.Option(..., help="Model name."),
    phase: Optional[str] = typer.Option(None, help="Only this phase."),
    limit: int = typer.Option(200, help="Rows to print."),
    root: Optional[Path] = _ROOT,
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Print a latency table (header and rows)."""
    from rich.table import Table

    from profiler.table import row_width_key

    from amoeba_core.shape import grid_key

    tab = _existing(device, flow, model, root)
    df = tab.corrected(tab.rows(phase=phase)).sort_values(
        ["variant", "phase", "source", "width", "depth"], ascending=[1, 1, 1, 0, 1])
    if as_json:
        from profiler.json_out import table_json

        print(table_json(tab, df.head(limit)))
        return
    t = Table(title=f"{tab.path} ({len(tab.df)} rows; ms = ratio x reference level where paired, else p50)")
    for c in ("variant", "phase", "prompt", "threads", "shape", "ms [90%]", "ratio", "p50 ms", "p10-p90 ms", "n",
              "util", "source"):
        t.add_column(c)

    def num(v: float, fmt: str) -> str:
        return "-" if v != v else format(v, fmt)  # NaN -> "-"

    for _, x in df.head(limit).iterrows():
        t.add_row(
            x.variant,
            x.phase,
            str(x.prompt_len),
            str(x.threads),
            grid_key(x.depth, row_width_key(x.width, x.attn_width)),
            f"{x.ms:.3f} [{num(x.ms_lo, '.3f')}, {num(x.ms_hi, '.3f')}]",
            num(x.ratio, ".4f"),
            f"{x.p50_ms:.3f}",
            f"{x.p10_ms:.3f}-{x.p90_ms:.3f}",
            str(x.n),
            num(x.util, ".2f"),
            x.source,
        )
    _console().print(t)


@table_app.command("export")
def table_export(
    device: str = typer.Option(..., help="Device name."),
    flow: str = typer.Option(..., help="Flow name."),
    model: str = typer.Option(..., help="Model name."),
    out: Path = typer.Option(..., help="File to write: .parquet (header in its metadata, for `table import`) or .csv."),
    root: Optional[Path] = _ROOT,
) -> None:
    """Write a latency table as Parquet (interchange: `amoeba table import` reads it) or CSV."""
    if out.suffix not in (".parquet", ".csv"):
        raise AmoebaError(f"--out must end in .parquet or .csv, got {out.name}")
    tab = _existing(device, flow, model, root)
    if out.suffix == ".csv":
        tab.export_csv(out)
    else:
        from profiler.store.legacy import export_parquet

        export_parquet(tab.store, device, flow, model, out)
    _console().print(f"{len(tab.df)} rows -> {out}")


@table_app.command("import")
def table_import(
    path: Path = typer.Argument(..., help="A Parquet file written by `amoeba table export`."),
    as_device: Optional[str] = typer.Option(None, "--as", help="Store it under this device name."),
    root: Optional[Path] = _ROOT,
) -> None:
    """Merge an exported latency table into the store (rows already present are kept)."""
    from profiler.store import open_store
    from profiler.store.legacy import import_parquet

    if not path.is_file():
        raise AmoebaError(f"no such file {path}")
    device, flow, model, n = import_parquet(open_store(root), path, as_device)
    _console().print(f"{n} new rows -> {device}/{flow}-{model}")


def _existing(device: str, flow: str, model: str, root: Path | None):  # noqa: ANN202
    from profiler.lookup import list_devices, list_tables
    from profiler.table import LatencyTable

    if device not in list_devices(root):
        raise AmoebaError(f"unknown device {device!r}; known: {', '.join(list_devices(root)) or '(none)'}")
    tab = LatencyTable(device, flow, model, root)
    if not tab.exists:
        known = ", ".join(f"{t.flow}/{t.model}" for t in list_tables(root) if t.device == device) or "(none)"
        raise AmoebaError(f"no latency table {tab.path}; known on {device}: {known}")
    return tab


COMMANDS = {"devices": devices, "profile": profile, "predict": predict, "table": table_app, "cache": cache_app}
