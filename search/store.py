"""Where studies live: one front door for every Optuna storage (CLI, benchmarks, workers).

``open_storage(url, run_dir)``:

* ``None`` -> ``sqlite:///<run_dir>/amoeba.db``, the run's store (one machine; opens in
  optuna-dashboard as it is; ``<run_dir>/study.db`` where an earlier version left one);
* any SQLAlchemy URL (``sqlite:///...``, ``postgresql://user@host/db``) -> ``RDBStorage``, which is
  how several machines search one study. A database server (PostgreSQL, MySQL) gets trial
  heartbeats (every ``heartbeat_s``, default 60 s): a trial whose worker died (SIGKILL, lost
  machine) is marked FAIL once its heartbeat is older than the grace period (2 heartbeats), and
  Optuna's retry callback puts the same parameters back in the queue for the next worker
  (up to ``max_retry`` times), so every trial ends COMPLETE, FAIL-and-retried, or PRUNED.
  ``postgresql://`` uses whichever driver is installed (psycopg 3 from the ``fleet`` extra, or psycopg2);
* ``journal:<path>`` or a path ending in ``.log``/``.journal`` -> ``JournalStorage`` on a file
  (several processes on one machine, no database server);
* ``memory`` -> in-memory (benchmarks, nothing written).

SQLite gets a long busy timeout so several local processes can write without "database is
locked" errors.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from amoeba_core.errors import AmoebaError
from amoeba_core.filelock import file_lock

log = logging.getLogger(__name__)


def storage_url(url: str | None, run_dir: Path | str) -> str:
    """The URL a study is stored under: by default the run's store (``<run>/amoeba.db``, the same SQLite
    file as its accuracy records), or ``<run>/study.db`` where an earlier version left its studies."""
    if url is None or url == "":
        run = Path(run_dir).resolve()
        return f"sqlite:///{run / 'study.db' if (run / 'study.db').is_file() else run / 'amoeba.db'}"
    return url


HEARTBEAT_S = 60


def open_storage(url: str | None, run_dir: Path | str, heartbeat_s: int | None = None, max_retry: int = 3) -> Any:
    """An Optuna storage object for ``url`` (see the module docstring); creates ``run_dir``.

    ``heartbeat_s``: trial heartbeat interval for RDB storages (default: 60 s on a database server,
    off on SQLite; 0 turns it off).
    """
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    from search.db import normalize_url, redact

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
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    beat = (0 if u.startswith("sqlite:") else HEARTBEAT_S) if heartbeat_s is None else int(heartbeat_s)
    if beat > 0:
        kwargs.update(heartbeat_interval=beat, grace_period=2 * beat,
                      heartbeat_stale_trial_callback=retry_callback(max_retry))
    real = normalize_url(u)
    for attempt in range(6):
        try:
            with _schema_lock(u):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RDBStorage(real, **kwargs)
        except ImportError as e:
            raise AmoebaError(f"storage {u.split('://')[0]} needs a driver that is not installed: {e}") from None
        except Exception as e:  # sqlalchemy errors: bad URL, unreachable server, a schema race
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            racing = "already exists" in text or "UNIQUE constraint" in text or "duplicate key" in text
            if not racing or attempt == 5:
                raise AmoebaError(f"cannot open storage {redact(u)}: {text}") from None
            log.info("storage schema race (%s); retrying", text)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def retry_callback(max_retry: int) -> Any:
    """Optuna's stale-trial retry callback (``RetryHeartbeatStaleTrialCallback`` from 4.9, before that
    ``RetryFailedTrialCallback``)."""
    import optuna
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=max_retry)


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Serialise schema creation of a local SQLite file across processes (servers retry instead)."""
    db = url.split(":///", 1)[-1] if url.startswith("sqlite:") else ""
    if not db or db == ":memory:":
        yield
        return
    with file_lock(Path(db).with_name(f".{Path(db).name}.lock")):
        yield


def study_name(model: str, method: str, device: str, flow: str, phase: str, budget_ms: float | None) -> str:
    budget = "" if budget_ms is None else f"-b{budget_ms:g}ms"
    return f"{model}-{device}-{flow}-{phase}{budget}-{method}"
