"""`amoeba push` to a running `amoeba serve` (SQLite database, real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from typer.testing import CliRunner

from amoeba.cli import app
from tests.search.test_service import _serve

TOKEN = "fleet-token"


@pytest.fixture(scope="module")
def fleet(measured_run: Path, profiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('fleet') / 'service.db'}"
    for base in _serve(measured_run, profiles, TOKEN, db):
        yield base, db


def _get(base: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{base}{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def _payload(profiles: Path, name: str) -> dict[str, Any]:
    from search.fleet import profile_payload

    return profile_payload("cpu-host", profiles, name)


def test_push_then_query_without_restart(fleet: tuple[str, str], profiles: Path) -> None:
    base, db = fleet
    assert _get(base, "/query", device="edge-1", flow="pytorch", budget_ms=5).status_code == 404
    args = ["push", "--server", base, "--token", TOKEN, "--device", "cpu-host", "--as", "edge-1", "--root", str(profiles)]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    n = len(_payload(profiles, "edge-1")["tables"][0]["rows"])
    assert f"{n} rows -> {n} new, 0 already there" in r.output
    # answered at once, from the pushed rows: the same shapes and latencies as the local device
    for budget in (0.5, 2.0, 50.0):
        a = _get(base, "/query", device="edge-1", flow="pytorch", budget_ms=budget).json()
        b = _get(base, "/query", device="cpu-host", flow="pytorch", budget_ms=budget).json()
        assert a["device"] == "edge-1" and a["shape"] == b["shape"] and a["fastest"] == b["fastest"]
    assert "edge-1" in _get(base, "/devices").json()["devices"]
    # idempotent: pushing again stores nothing new
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0 and f"{n} rows -> 0 new, {n} already there, 0 conflicting" in r.output, r.output
    from search.db import FleetDB

    assert FleetDB(db).count_rows("edge-1") == n


def _rows(p: dict[str, Any]) -> list[dict[str, Any]]:
    return p["tables"][0]["rows"]


def _measured(p: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in _rows(p) if r["source"] == "measured")


def _relabel_roofline_as_measured(p: dict[str, Any]) -> None:
    r = _measured(p)
    r.update(samples_ms=[], n=0)  # a computed number has no samples: labelled measured it is refused


@pytest.mark.parametrize("name, spoil, reason", [
    ("roofline-as-measured", _relabel_roofline_as_measured, "carries its timing samples"),
    ("nan", lambda p: _measured(p).update(p50_ms=math.nan), "finite"),
    ("inf", lambda p: _measured(p).update(p90_ms=math.inf), "finite"),
    ("negative", lambda p: _measured(p).update(p10_ms=-1.0), "greater than 0"),
    ("p50-outside-samples", lambda p: _measured(p).update(p50_ms=1e6, p90_ms=2e6), "outside its samples"),
    ("computed-with-samples", lambda p: _measured(p).update(source="predicted"), "cannot carry timing samples"),
    ("unknown-source", lambda p: _measured(p).update(source="guessed"), "source must be one of"),
    ("unknown-geometry", lambda p: p["tables"][0].update(model="mystery-7b", header={}), "not a known geometry"),
    ("too-deep", lambda p: _measured(p).update(depth=99), "depth 99"),
    ("bad-name", lambda p: p.update(device="../etc"), "device"),
    ("unknown-flow", lambda p: p["tables"][0].update(flow="tensorflow"), "unknown flow"),
    ("spec-sheet-measured", lambda p: p["spec"].update(roofline_only=True), "roofline-only"),
])
def test_push_rejects_bad_tables(fleet: tuple[str, str], profiles: Path, name: str, spoil: Any, reason: str) -> None:
    base, db = fleet
    from search.db import FleetDB

    before = FleetDB(db).count_rows()
    p = copy.deepcopy(_payload(profiles, f"bad-{name}"))
    spoil(p)
    body = json.dumps(p, allow_nan=True)  # what a careless client could send
    r = httpx.post(f"{base}/profiles", content=body, timeout=30,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 422 and reason in r.text, (r.status_code, r.text[:500])
    assert len(r.content) < 5000
    assert FleetDB(db).count_rows() == before  # nothing half-written
    assert f"bad-{name}" not in _get(base, "/devices").json()["devices"]


def test_direct_database_push_validates_too(tmp_path: Path, profiles: Path) -> None:
    from amoeba_core.errors import AmoebaError
    from search.fleet import push_profile

    db = f"sqlite:///{tmp_path / 'direct.db'}"
    p = _payload(profiles, "edge-2")
    assert push_profile(p, db=db)["inserted"] == len(_rows(p))
    bad = copy.deepcopy(p)
    _relabel_roofline_as_measured(bad)
    with pytest.raises(AmoebaError, match="rejected: .*timing samples"):
        push_profile(bad, db=db)
    # same key, other value: the stored row is kept and the push says so
    changed = copy.deepcopy(p)
    r = _measured(changed)
    r["samples_ms"] = [x * 2 for x in r["samples_ms"]]
    r["p50_ms"], r["p10_ms"], r["p90_ms"] = r["p50_ms"] * 2, r["p10_ms"] * 2, r["p90_ms"] * 2
    rep = push_profile(changed, db=db)
    assert rep["inserted"] == 0 and rep["conflicts"] == 1 and rep["present"] == len(_rows(p)) - 1


def test_push_a_run(fleet: tuple[str, str], measured_run: Path, tmp_path: Path) -> None:
    """Accuracy records pushed under the served run's name are merged; the answers stay exact."""
    import shutil

    base, _ = fleet
    before = _get(base, "/fronts/cpu-host/pytorch").json()
    copy_dir = tmp_path / measured_run.name
    shutil.copytree(measured_run, copy_dir, ignore=shutil.ignore_patterns("*.db", ".*"))
    r = CliRunner().invoke(app, ["push", "--server", base, "--token", TOKEN, "--run", str(copy_dir), "--device",
                                 "cpu-host", "--root", str(tmp_path / "none")], catch_exceptions=True)
    assert r.exit_code != 0 and "unknown device 'cpu-host'" in str(r.exception)  # not under that root
    r = CliRunner().invoke(app, ["push", "--server", base, "--token", TOKEN, "--run", str(copy_dir), "--root",
                                 str(tmp_path / "none")], catch_exceptions=False)
    assert r.exit_code == 0 and "0 new" in r.output, r.output
    assert _get(base, "/fronts/cpu-host/pytorch").json() == before


def test_runs_lists_every_stored_run(fleet: tuple[str, str], measured_run: Path, tmp_path: Path) -> None:
    """A run pushed under another name is stored and listed by GET /runs (not served by this server)."""
    import shutil

    base, _ = fleet
    other = tmp_path / "other-run"
    shutil.copytree(measured_run, other, ignore=shutil.ignore_patterns(".*"))
    r = CliRunner().invoke(app, ["push", "--server", base, "--token", TOKEN, "--run", str(other), "--root",
                                 str(tmp_path / "none")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = _get(base, "/runs").json()
    runs = {x["name"]: x for x in got["runs"]}
    assert got["served"] == measured_run.name and runs[measured_run.name]["served"]
    assert not runs["other-run"]["served"] and "amoeba serve --run" in got["note"]
    assert runs["other-run"]["records"] == runs[measured_run.name]["records"] > 0
    assert runs["other-run"]["model"] == runs[measured_run.name]["model"]
