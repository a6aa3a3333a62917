"""A shared PostgreSQL 15 server (started in a temporary folder by the ``postgres_url`` fixture):
search workers share one Optuna study and survive a SIGKILLed worker; concurrent pushes store
every row exactly once; the service answers from PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.search.conftest import fresh_database
from tests.search.test_service import _serve

N_TRIALS = 10  # per surviving worker


def _search_worker(i: int, url: str, run: str, objective: Any, profiles: str, marker: str, victim: bool) -> None:
    import torch

    from search.evolutionary import run_optuna
    from search.latency import LatencyObjective
    from search.problem import SearchProblem
    from search.space import SearchSpace
    from search.store import open_storage

    torch.set_num_threads(1)

    def accuracy(shape: Any) -> Any:
        if victim:  # the worker that dies: it stops mid-trial, its heartbeat goes quiet
            Path(marker).write_text(json.dumps({"pid": os.getpid(), "shape": shape.key}))
            time.sleep(600)
        return objective(shape)

    space = SearchSpace.first_layers("tiny", (1, 2, 3, 4), (1.0, 0.5))
    problem = SearchProblem(space, accuracy, LatencyObjective("cpu-host", "pytorch", "tiny", root=Path(profiles)))
    # a pause after each trial keeps the survivors running well past the dead worker's grace period (2 s)
    run_optuna(problem, "random", N_TRIALS, seed=i, storage=open_storage(url, run, heartbeat_s=1), study_name="shared",
               callbacks=[lambda study, trial: time.sleep(0.4)])


def test_four_workers_one_killed_every_trial_accounted_for(postgres_url: str, tmp_path: Path, profiles: Path,
                                                          strategy_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from search.objectives import AccuracyObjective, AccuracyTable
    from search.problem import DIRECTIONS
    from search.store import open_storage, retry_callback

    url = fresh_database(postgres_url, "study_kill")
    run = tmp_path / "run"
    assert open_storage(url, run).get_heartbeat_interval() == 60  # a database server: heartbeats by default
    assert open_storage(None, run).get_heartbeat_interval() is None  # the run's SQLite file: none
    optuna.create_study(storage=open_storage(url, run, heartbeat_s=1), study_name="shared", directions=list(DIRECTIONS))
    objective = AccuracyObjective.from_stage1(strategy_path, AccuracyTable(run / "accuracy.parquet"), max_windows=2,
                                              seq_len=32)
    marker = tmp_path / "victim.json"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_search_worker, args=(i, url, str(run), objective, str(profiles), str(marker), i == 0))
             for i in range(4)]
    for p in procs:
        p.start()
    deadline = time.time() + 120
    while not marker.exists():
        assert time.time() < deadline and procs[0].is_alive(), "the victim never started a trial"
        time.sleep(0.05)
    os.kill(procs[0].pid, signal.SIGKILL)
    for p in procs:
        p.join(240)
    assert procs[0].exitcode == -signal.SIGKILL
    assert [p.exitcode for p in procs[1:]] == [0, 0, 0]

    trials = optuna.load_study(study_name="shared", storage=open_storage(url, run, heartbeat_s=1)).get_trials()
    states = [t.state for t in trials]
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no gap, no duplicate
    assert len(trials) == 3 * N_TRIALS + 1  # the survivors' trials (one of them the retry) + the killed one
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 3 * N_TRIALS
    killed = next(t for t in trials if t.state == TrialState.FAIL)
    assert killed.user_attrs == {}  # it died before its objective returned
    cb = type(retry_callback(1))
    retries = [t for t in trials if cb.retried_trial_number(t) == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert retries[0].user_attrs["shape"] == json.loads(marker.read_text())["shape"]


def _pusher(how: str, target: str, names: list[str], rows: slice, payload: dict[str, Any], barrier: Any,
            out: str, token: str | None) -> None:
    from search.fleet import push_profile

    totals = {"inserted": 0, "present": 0, "conflicts": 0}
    barrier.wait(60)
    for _ in range(2):  # every push twice: the second adds nothing
        for name in names:
            p = json.loads(json.dumps(payload))
            p["device"], p["spec"]["name"] = name, name
            p["tables"][0]["rows"] = p["tables"][0]["rows"][rows]
            rep = push_profile(p, server=target, token=token) if how == "http" else push_profile(p, db=target)
            for k in totals:
                totals[k] += rep[k]
    Path(out).write_text(json.dumps(totals))


def test_two_clients_push_overlapping_tables_at_once(postgres_url: str, tmp_path: Path, profiles: Path,
                                                     measured_run: Path) -> None:
    import httpx

    from search.db import FleetDB
    from search.fleet import profile_payload

    url = fresh_database(postgres_url, "fleet_push")
    payload = profile_payload("cpu-host", profiles)
    n = len(payload["tables"][0]["rows"])
    a_names, b_names = [f"edge-{i}" for i in range(0, 6)], [f"edge-{i}" for i in range(3, 9)]
    a_rows, b_rows = slice(0, n * 3 // 4), slice(n // 4, n)
    for base in _serve(measured_run, profiles, "t0k", url):  # the service itself on PostgreSQL
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(2)
        outs = [tmp_path / "a.json", tmp_path / "b.json"]
        procs = [ctx.Process(target=_pusher, args=("http", base, a_names, a_rows, payload, barrier, str(outs[0]),
                                                   "t0k")),
                 ctx.Process(target=_pusher, args=("db", url, b_names, b_rows, payload, barrier, str(outs[1]), None))]
        for p in procs:
            p.start()
        for p in procs:
            p.join(180)
        assert [p.exitcode for p in procs] == [0, 0]
        db = FleetDB(url)
        expect = {}
        for i in range(9):
            a, b = f"edge-{i}" in a_names, f"edge-{i}" in b_names
            expect[f"edge-{i}"] = n if a and b else len(range(n)[a_rows if a else b_rows])
        assert {d: db.count_rows(d) for d in expect} == expect
        sa, rows = db.sa, db.store.rows
        with db.store.engine.connect() as c:
            dup = c.execute(sa.select(rows.c.device, rows.c.row_key).group_by(rows.c.device, rows.c.row_key)
                            .having(sa.func.count() > 1)).all()
            # typed columns: a latency is selected and compared in SQL
            fastest = c.execute(sa.select(sa.func.min(rows.c.p50_ms)).where(
                (rows.c.device == "edge-4") & (rows.c.phase == "decode") & (rows.c.source == "measured"))).scalar_one()
        assert dup == []
        assert isinstance(fastest, float) and fastest == min(
            r["p50_ms"] for r in payload["tables"][0]["rows"] if r["phase"] == "decode" and r["source"] == "measured")
        reports = [json.loads(o.read_text()) for o in outs]
        assert sum(r["inserted"] for r in reports) == sum(expect.values())  # each row inserted by exactly one client
        assert sum(r["conflicts"] for r in reports) == 0
        assert sum(r["inserted"] + r["present"] for r in reports) == 2 * (6 * len(range(n)[a_rows])
                                                                           + 6 * len(range(n)[b_rows]))
        h = {"Authorization": "Bearer t0k"}
        for d in sorted(set(a_names) & set(b_names)):  # complete tables (the union), each half from another client
            r = httpx.get(f"{base}/query", params={"device": d, "flow": "pytorch", "budget_ms": 100}, headers=h,
                          timeout=30)
            assert r.status_code == 200 and r.json()["device"] == d, r.text[:300]
