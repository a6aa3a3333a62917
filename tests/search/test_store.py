from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from search.objectives import AccuracyObjective, AccuracyTable
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
    table = AccuracyTable(run / "accuracy.parquet")
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
        assert storage_url(None, run) == f"sqlite:///{(run / 'study.db').resolve()}"
    study = optuna.load_study(study_name="shared", storage=open_storage(url, run))
    trials = study.get_trials(deepcopy=False)
    reported = [tid for o in outs for tid in json.loads(o.read_text())]
    assert len(reported) == N_WORKERS * N_TRIALS == len(set(reported))
    assert sorted(t._trial_id for t in trials) == sorted(reported)  # every trial recorded once, none lost
    assert sorted(t.number for t in trials) == list(range(N_WORKERS * N_TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # The shared accuracy table holds each evaluated shape exactly once.
    import pandas as pd

    df = pd.read_parquet(run / "accuracy.parquet")
    assert not df.duplicated(["fingerprint", "key"]).any()
    assert set(df["key"]) == {t.user_attrs["shape"] for t in trials}


def _writer(path: str, n: int) -> None:
    from search.objectives import AccuracyRecord

    table = AccuracyTable(path)
    for i in range(n):
        table.put(AccuracyRecord("fp", f"d{i}-w1.000", i, 1.0, 0.5, ppl=10.0, nll=2.3, n_tokens=64))


def test_readers_never_see_a_torn_table(tmp_path: Path) -> None:
    """A reader reloading while another process keeps replacing the table always reads a whole
    version (pyarrow opening the path twice once read one version's footer and the next's pages)."""
    path = tmp_path / "accuracy.parquet"
    writer = mp.get_context("fork").Process(target=_writer, args=(str(path), 300))
    writer.start()
    reader = AccuracyTable(path)
    seen = 0
    while writer.is_alive():
        reader._mtime = -1  # force a read of whatever version is there now
        reader.reload()
        seen = max(seen, len(reader.records("fp")))
    writer.join(60)
    assert writer.exitcode == 0
    reader._mtime = -1
    assert len(reader.records("fp")) == 300 and seen <= 300
