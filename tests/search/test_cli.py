from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from amoeba.cli import app
from amoeba_core.errors import AmoebaError
from search.cli import parse_budget
from search.query import QueryIndex, parse_share


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output + (str(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else "")


def test_parse_budget() -> None:
    assert parse_budget("40ms") == 40 and parse_budget("0.04s") == 40 and parse_budget("2.5") == 2.5


def test_query_prints_shape_latency_accuracy_and_export(run_dir: Path, profiles: Path) -> None:
    code, out = _run("query", "--run", str(run_dir), "--root", str(profiles), "--device", "cpu-host", "--flow",
                     "pytorch", "--budget", "1000ms")
    assert code == 0, out
    for word in ("shape", "latency", "predicted", "measured", "accuracy", "amoeba export --strategy"):
        assert word in out
    code, out = _run("query", "--run", str(run_dir), "--root", str(profiles), "--device", "cpu-host", "--flow",
                     "pytorch", "--budget", "0.000001ms")
    assert code == 1 and "infeasible" in out and "fastest" in out


def test_a_budget_as_a_share_of_the_full_model(run_dir: Path, profiles: Path) -> None:
    assert parse_share("80%") == 0.8 and parse_share(" 12.5 % ") == 0.125 and parse_share("40ms") is None
    for bad in ("x%", "0%", "-5%", "inf%", "nan%"):
        with pytest.raises(AmoebaError, match="share|budget"):
            parse_share(bad)
    with pytest.raises(AmoebaError, match="latency table"):
        parse_budget("80%")
    # 60% of the full model's latency on the table: the answer is the best shape at or under that many ms
    ix = QueryIndex(run_dir, profiles)
    full = ix.full_latency("cpu-host", "pytorch")
    code, out = _run("query", "--run", str(run_dir), "--root", str(profiles), "--device", "cpu-host", "--flow",
                     "pytorch", "--budget", "60%")
    exact = ix.best("cpu-host", "pytorch", 0.6 * full.ms)
    assert code == (0 if exact.feasible else 1), out
    assert f"60% of {ix.full_shape_key()} ({full.ms:.3f} ms" in out
    if exact.feasible:
        assert exact.shape is not None and exact.shape.key in out and exact.shape.latency_ms <= 0.6 * full.ms
    code, out = _run("query", "--run", str(run_dir), "--root", str(profiles), "--device", "cpu-host", "--flow",
                     "pytorch", "--budget", "1000%")
    assert code == 0 and ix.best("cpu-host", "pytorch", 10 * full.ms).shape.key in out, out
    # the plot's budget line: resolved on each device/flow's own table, the legend says how
    from search.plot import front_data

    data = front_data(ix, "cpu-host", "pytorch", budget_ms="60%")
    assert data.budget_ms == pytest.approx(0.6 * full.ms) and data.budget_label.startswith("budget 60% of d")


def test_how_a_latency_is_described() -> None:
    from profiler.lookup import LatencyEstimate
    from search.query import describe_latency

    # A paired table's reference row has ratio 1 with no interval: said so, not printed as "40.000-40.000 ms".
    ref = LatencyEstimate(ms=40.0, source="measured", measured_ms=40.0, lo_ms=40.0, hi_ms=40.0)
    assert describe_latency(ref) == "measured, the pairing's reference: ratio 1 by definition"
    other = LatencyEstimate(ms=30.0, source="predicted", lo_ms=29.5, hi_ms=30.5, extrapolated=True)
    assert describe_latency(other) == "predicted, 29.500-30.500 ms, extrapolated"


def test_query_errors(run_dir: Path, profiles: Path) -> None:
    code, out = _run("query", "--run", str(run_dir), "--root", str(profiles), "--device", "mars", "--flow",
                     "pytorch", "--budget", "5ms")
    assert code != 0 and "known: cpu-host" in out
    code, out = _run("query", "--run", str(run_dir), "--root", str(profiles), "--device", "cpu-host", "--flow",
                     "pytorch", "--budget", "soon")
    assert code != 0 and "budget" in out


def test_plot_writes_one_png_per_device_flow(run_dir: Path, profiles: Path, tmp_path: Path) -> None:
    code, out = _run("plot", "--run", str(run_dir), "--root", str(profiles), "--out", str(tmp_path), "--budget",
                     "1ms")
    assert code == 0, out
    [png] = list(tmp_path.glob("*.png"))
    assert png.name == "front-cpu-host-pytorch-decode.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_serve_refuses_public_bind_without_token(run_dir: Path) -> None:
    code, out = _run("serve", "--run", str(run_dir), "--host", "0.0.0.0")
    assert code != 0 and "--token" in out


def test_search_records_every_evaluation_in_the_study(run_dir: Path) -> None:
    import optuna

    from search.store import open_storage

    storage = open_storage(None, run_dir)
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert len(study.trials) == 60 and {t.user_attrs["shape"] for t in study.trials}
    assert (run_dir / "amoeba.db").is_file() and (run_dir / "search.yaml").is_file()
    assert not (run_dir / "study.db").exists() and not (run_dir / "accuracy.parquet").exists()  # one file
