from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiler.measure import MeasureConfig

FAST = MeasureConfig(warmup=1, min_repeats=3, max_repeats=5, max_seconds=0.2, rel_ci=0.1, rounds=1, min_seconds=0)


@pytest.fixture(scope="session")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profiles root with this machine (cpu-host) and a real PyTorch decode table of `tiny`."""
    from profiler.device import detect_host, save_device
    from profiler.plan import make_plan, run_profile

    root = tmp_path_factory.mktemp("search-profiles")
    save_device(detect_host(threads=1), root)
    plan = make_plan("cpu-host", "pytorch", "tiny", (1, 2, 3, 4), (1.0, 0.5), ("decode", "prefill"), 16, "float32", 1,
                     measure_cfg=FAST)
    assert run_profile(plan, root).written == 16
    return root


@pytest.fixture(scope="session")
def strategy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Stage 1 strategy object for the tiny random LLaMA (drop-last depths, identity widths)."""
    from amoeba_core.model import load_model
    from amoeba_core.strategy import Strategy

    m = load_model("tiny")
    path = tmp_path_factory.mktemp("strategy") / "strategy.yaml"
    Strategy.trivial(m.geometry, m.fingerprint, "tiny", widths=(1.0, 0.75, 0.5)).save(path)
    return path


@pytest.fixture(scope="session")
def run_dir(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run where `amoeba search` evaluated every shape of a 4 x 5 space (random search, real evaluator)."""
    from typer.testing import CliRunner

    from amoeba.cli import app

    run = tmp_path_factory.mktemp("runs") / "tiny"
    res = CliRunner().invoke(app, ["search", "--strategy", str(strategy_path), "--device", "cpu-host", "--flow",
                                   "pytorch", "--method", "random", "--trials", "60", "--run", str(run),
                                   "--widths", "0.5:1:0.125", "--max-windows", "2", "--seq-len", "64",
                                   "--root", str(profiles)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture(scope="session")
def measured_run(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run over only the profiled shapes (depths 1-4 x widths 1, 0.5): every latency is a measured
    row, so the answers do not depend on the predictor (fleet tests push and compare these)."""
    from typer.testing import CliRunner

    from amoeba.cli import app

    run = tmp_path_factory.mktemp("runs") / "measured"
    res = CliRunner().invoke(app, ["search", "--strategy", str(strategy_path), "--device", "cpu-host", "--flow",
                                   "pytorch", "--method", "random", "--trials", "30", "--run", str(run),
                                   "--widths", "1,0.5", "--max-windows", "2", "--seq-len", "64",
                                   "--root", str(profiles)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


def env_with(profiles: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AMOEBA_PROFILES"] = str(profiles)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(autouse=True, scope="session")
def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


PG_BIN = Path(os.environ.get("AMOEBA_PG_BIN", "/usr/lib/postgresql/15/bin"))


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 15 server in a temporary folder (initdb + pg_ctl), for the shared-database tests.

    As root, the server runs as the ``postgres`` user (initdb refuses root). Skipped, saying why,
    where the binaries or that user are missing.
    """
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not initdb.is_file() or not pg_ctl.is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[fleet]')")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="amoeba-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    subprocess.run([*prefix, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the server of ``url`` (one per test: no state shared between tests)."""
    import psycopg

    base = url.rsplit("/", 1)[0]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"
