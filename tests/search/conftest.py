from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._runs import FAST, profile_tiny, search_tiny, tiny_strategy  # noqa: F401 (re-exported)
from tests._runs import cli_env as env_with  # noqa: F401 (re-exported)


@pytest.fixture(scope="session")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profiles root with this machine (cpu-host) and a real PyTorch decode+prefill table of `tiny`."""
    return profile_tiny(tmp_path_factory.mktemp("search-profiles"), ("decode", "prefill"))


@pytest.fixture(scope="session")
def strategy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Stage 1 strategy object for the tiny random LLaMA (drop-last depths, identity widths)."""
    return tiny_strategy(tmp_path_factory.mktemp("strategy") / "strategy.yaml", (1.0, 0.75, 0.5))


@pytest.fixture(scope="session")
def run_dir(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run where `amoeba search` evaluated every shape of a 4 x 5 space (random search, real evaluator)."""
    return search_tiny(strategy_path, profiles, tmp_path_factory.mktemp("runs") / "tiny", 60, "0.5:1:0.125", 64)


@pytest.fixture(scope="session")
def measured_run(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run over only the profiled shapes (depths 1-4 x widths 1, 0.5): every latency is a measured
    row, so the answers do not depend on the predictor (fleet tests push and compare these)."""
    return search_tiny(strategy_path, profiles, tmp_path_factory.mktemp("runs") / "measured", 30, "1,0.5", 64)


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
