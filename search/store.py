"""Where studies live: one front door for every Optuna storage (CLI, benchmarks, workers).

``open_storage(url, run_dir)``:

* ``None`` -> ``sqlite:///<run_dir>/study.db`` (one machine, opens in optuna-dashboard as it is);
* any SQLAlchemy URL (``sqlite:///...``, ``postgresql://user@host/db``) -> ``RDBStorage``, which is
  how several machines search one study;
* ``journal:<path>`` or a path ending in ``.log``/``.journal`` -> ``JournalStorage`` on a file
  (several processes on one machine, no database server);
* ``memory`` -> in-memory (benchmarks, nothing written).

SQLite gets a long busy timeout so several local processes can write without "database is
locked" errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from amoeba_core.errors import AmoebaError

log = logging.getLogger(__name__)


def storage_url(url: str | None, run_dir: Path | str) -> str:
    """The URL a study is stored under (the default is the run's SQLite file)."""
    if url is None or url == "":
        path = Path(run_dir).resolve() / "study.db"
        return f"sqlite:///{path}"
    return url


def open_storage(url: str | None, run_dir: Path | str) -> Any:
    """An Optuna storage object for ``url`` (see the module docstring); creates ``run_dir``."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    run_dir = Path(run_dir)
    u = storage_url(url, run_dir)
    if u == "memory":
        return optuna.storages.InMemoryStorage()
    if u.startswith("journal:") or (("://" not in u) and u.endswith((".log", ".journal"))):
        path = Path(u[len("journal:"):] if u.startswith("journal:") else u)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in u:
        raise AmoebaError(f"storage {u!r} is not a database URL (sqlite:///..., postgresql://...), "
                          "a journal file (journal:PATH or *.log) or 'memory'")
    kwargs: dict[str, Any] = {}
    if u.startswith("sqlite:"):
        db = u.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(6):
        try:
            with _schema_lock(u):
                return RDBStorage(u, **kwargs)
        except ImportError as e:
            raise AmoebaError(f"storage {u.split('://')[0]} needs a driver that is not installed: {e}") from None
        except Exception as e:  # sqlalchemy errors: bad URL, unreachable server, a schema race
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            racing = "already exists" in text or "UNIQUE constraint" in text or "duplicate key" in text
            if not racing or attempt == 5:
                raise AmoebaError(f"cannot open storage {u}: {text}") from None
            log.info("storage schema race (%s); retrying", text)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Serialise schema creation of a local SQLite file across processes (servers retry instead)."""
    db = url.split(":///", 1)[-1] if url.startswith("sqlite:") else ""
    if not db or db == ":memory:":
        yield
        return
    with open(Path(db).with_name(f".{Path(db).name}.lock"), "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def study_name(model: str, method: str, device: str, flow: str, phase: str, budget_ms: float | None) -> str:
    budget = "" if budget_ms is None else f"-b{budget_ms:g}ms"
    return f"{model}-{device}-{flow}-{phase}{budget}-{method}"
