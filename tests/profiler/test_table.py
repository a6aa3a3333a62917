"""LUT storage: transactional appends, skip-on-rerun, concurrent writers, corrupt files, CSV.

Rows here carry fixed stand-in latencies: these tests are about storage, not timing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pandas as pd
import pytest

from amoeba_core.errors import AmoebaError
from profiler.store.legacy import legacy_paths
from profiler.table import LatencyTable, row_key


def _row(depth: int, width: float = 1.0, phase: str = "decode", ms: float = 1.0, source: str = "measured") -> dict:
    return {
        **row_key("float32", depth, width, phase, 1, 32, source),
        "p50_ms": ms,
        "p10_ms": ms * 0.9,
        "p90_ms": ms * 1.1,
        "n": 3,
        "samples_ms": [ms * 0.9, ms, ms * 1.1] if source == "measured" else [],  # computed rows carry none
    }


def test_append_is_persistent_and_skips_duplicates(tmp_path: Path) -> None:
    t = LatencyTable("dev", "pytorch", "tiny", tmp_path)
    t.write_header({"dtype": "float32"}, environment={"threads": 1}, variant="float32")
    assert t.append(_row(1)) and t.append(_row(2))
    assert not t.append(_row(1, ms=99.0))  # same key: skipped, first value kept
    assert t.append(_row(1, source="per-layer"))  # another source is another row, never merged
    back = LatencyTable("dev", "pytorch", "tiny", tmp_path)
    assert len(back.df) == 3
    assert back.df.loc[(back.df.depth == 1) & (back.df.source == "measured"), "p50_ms"].item() == 1.0
    assert back.df.samples_ms.iloc[0] == [0.9, 1.0, 1.1]
    assert back.header["variants"] == ["float32"] and back.header["environments"]["float32"]["threads"] == 1
    assert not list(tmp_path.rglob("*.tmp*")), "temporary files left behind"


def test_rejects_unknown_source(tmp_path: Path) -> None:
    t = LatencyTable("dev", "pytorch", "tiny", tmp_path)
    with pytest.raises(AmoebaError, match="source"):
        t.append({**_row(1), "source": "guessed"})
    with pytest.raises(AmoebaError, match="timing samples"):  # the push schema is the table's schema
        t.append({**_row(1), "samples_ms": []})
    assert not t.exists and not (tmp_path / "amoeba.db").exists()  # nothing written, not even the file


def _writer(root: str, start: int) -> None:
    t = LatencyTable("dev", "pytorch", "tiny", root)
    for d in range(start, start + 10):
        t.append(_row(d))
        t.append(_row(d % 5 + 1))  # contended duplicates


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (1, 11, 21)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    df = LatencyTable("dev", "pytorch", "tiny", tmp_path).df
    assert sorted(df.depth) == list(range(1, 31))


def test_corrupt_files_raise_naming_the_file(tmp_path: Path) -> None:
    parquet, header = legacy_paths(tmp_path, "dev", "pytorch", "tiny")
    parquet.parent.mkdir(parents=True)
    parquet.write_bytes(b"PAR1 this is not parquet")  # a table of the earlier format, imported on open
    with pytest.raises(AmoebaError, match=r"corrupt latency table .*pytorch-tiny\.parquet"):
        LatencyTable("dev", "pytorch", "tiny", tmp_path)
    pd.DataFrame({"depth": [1]}).to_parquet(parquet)
    with pytest.raises(AmoebaError, match="missing columns"):
        LatencyTable("dev", "pytorch", "tiny", tmp_path)
    pd.DataFrame([{**_row(1), "samples_ms": [0.9, 1.0, 1.1]}]).to_parquet(parquet)
    header.write_text("device: [unclosed\n  :: - x")
    with pytest.raises(AmoebaError, match=r"corrupt table header .*pytorch-tiny\.yaml"):
        LatencyTable("dev", "pytorch", "tiny", tmp_path)
    header.write_text("just a string\n")
    with pytest.raises(AmoebaError, match="corrupt table header"):
        LatencyTable("dev", "pytorch", "tiny", tmp_path)
    db = tmp_path / "other" / "x.db"
    db.parent.mkdir()
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(AmoebaError, match=r"cannot open store .*x\.db"):
        LatencyTable("dev", "pytorch", "tiny", db).append(_row(1))


def test_csv_export(tmp_path: Path) -> None:
    t = LatencyTable("dev", "pytorch", "tiny", tmp_path)
    t.append(_row(3, 0.75, ms=2.5))
    out = t.export_csv(tmp_path / "t.csv")
    df = pd.read_csv(out)
    assert df.loc[0, "depth"] == 3 and df.loc[0, "width"] == 0.75 and df.loc[0, "p50_ms"] == 2.5
    assert json.loads(df.loc[0, "samples_ms"]) == [2.25, 2.5, 2.75]
    assert df.loc[0, "device"] == "dev" and df.loc[0, "source"] == "measured"


def test_replace_swaps_one_row_atomically(tmp_path: Path) -> None:
    t = LatencyTable("dev", "pytorch", "tiny", tmp_path)
    t.append(_row(1, ms=5.0))
    t.append(_row(2, ms=6.0))
    t.replace({**_row(1, ms=1.5), "discarded": 0})
    back = LatencyTable("dev", "pytorch", "tiny", tmp_path)
    assert len(back.df) == 2 and back.get(row_key("float32", 1, 1.0, "decode", 1, 32))["p50_ms"] == 1.5
    assert back.get(row_key("float32", 2, 1.0, "decode", 1, 32))["p50_ms"] == 6.0
    assert back.get(row_key("float32", 3, 1.0, "decode", 1, 32)) is None
