from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from search.objectives import AccuracyObjective, AccuracyRecord, AccuracyTable
from search.latency import LatencyObjective
from search.problem import SearchProblem
from search.space import SearchSpace
from search.store import open_storage, storage_url

N_WORKERS, N_TRIALS = 4, 6


def _worker(i: int, url: str, run: str, objective: AccuracyObjective, profiles: str, out: str) -> None:
    import torch

    from search.evolutionary import run_optuna

    torch.set_num_threads(1)
    space = SearchSpace.first_layers("tiny", (1, 2, 3, 4), (1.0,))
    problem = SearchProblem(space, objective, LatencyObjective("cpu-host", "pytorch", "tiny", root=Path(profiles)))
    mine: list[int] = []
    run_optuna(problem, "random", N_TRIALS, seed=i, storage=open_storage(url, run), study_name="shared",
               callbacks=[lambda study, t: mine.append(t._trial_id)])
    Path(out).write_text(json.dumps(mine))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_four_processes_share_one_study(kind: str, tmp_path: Path, profiles: Path, strategy_path: Path) -> None:
    import optuna

    run = tmp_path / "run"
    url = None if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    table = AccuracyTable(run)
    # One real evaluator (tiny random LLaMA) built here; forked workers inherit it and share the table.
    objective = AccuracyObjective.from_stage1(strategy_path, table, max_windows=2, seq_len=32)
    ctx = mp.get_context("fork")
    outs = [tmp_path / f"w{i}.json" for i in range(N_WORKERS)]
    procs = [ctx.Process(target=_worker, args=(i, url, str(run), objective, str(profiles), str(outs[i])))
             for i in range(N_WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    if kind == "sqlite":
        assert storage_url(None, run) == f"sqlite:///{(run / 'amoeba.db').resolve()}"  # study and records: one file
    study = optuna.load_study(study_name="shared", storage=open_storage(url, run))
    trials = study.get_trials(deepcopy=False)
    reported = [tid for o in outs for tid in json.loads(o.read_text())]
    assert len(reported) == N_WORKERS * N_TRIALS == len(set(reported))
    assert sorted(t._trial_id for t in trials) == sorted(reported)  # every trial recorded once, none lost
    assert sorted(t.number for t in trials) == list(range(N_WORKERS * N_TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # The run's store holds each evaluated shape exactly once (read with the standard library's sqlite3).
    import sqlite3

    with sqlite3.connect(run / "amoeba.db") as c:
        rows = c.execute("SELECT key, COUNT(*) FROM amoeba_accuracy WHERE run = '.' GROUP BY fingerprint, key").fetchall()
    assert all(n == 1 for _, n in rows)
    assert {k for k, _ in rows} == {t.user_attrs["shape"] for t in trials}


def _writer(path: str, n: int) -> None:
    from search.objectives import AccuracyRecord

    table = AccuracyTable(path)
    for i in range(n):
        table.put(AccuracyRecord("fp", f"d{i}-w1.000", i, 1.0, 0.5, ppl=10.0, nll=2.3, n_tokens=64))


def test_a_reader_sees_every_committed_record_once(tmp_path: Path) -> None:
    """A reader reloading while another process keeps inserting sees a growing set of whole records."""
    run = tmp_path / "run"
    AccuracyTable(run).put(AccuracyRecord("fp", "d0", 0, 1.0, 0.5))
    writer = mp.get_context("fork").Process(target=_writer, args=(str(run), 300))
    writer.start()
    reader = AccuracyTable(run)
    seen = [len(reader.records("fp"))]
    while writer.is_alive():
        seen.append(len(reader.records("fp")))
    writer.join(60)
    assert writer.exitcode == 0
    assert seen == sorted(seen)  # never fewer than before
    recs = reader.records("fp")
    assert len(recs) == 301 and all(r.ppl == 10.0 for r in recs if r.key != "d0")


def test_an_earlier_run_folder_opens_unchanged() -> None:
    """``<run>/accuracy.parquet`` as the earlier version wrote it (committed fixture) is imported on first
    open: the same records, field by field; opening again imports nothing twice."""
    import shutil
    import tempfile

    from search.records import record_dict

    fixture = Path(__file__).parent / "fixtures" / "earlier_run"
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "earlier_run"
        shutil.copytree(fixture, run)
        want = sorted(json.loads((run / "expected.json").read_text()), key=lambda r: r["key"])
        got = sorted((json.loads(json.dumps(record_dict(r))) for r in AccuracyTable(run).records()),
                     key=lambda r: r["key"])
        assert got == want
        assert len(AccuracyTable(run / "accuracy.parquet").records()) == len(want)  # the earlier spelling
        assert (run / "amoeba.db").is_file() and (run / "accuracy.parquet").is_file()
