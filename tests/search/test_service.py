from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOKEN = "s3cret"


def _serve(run_dir: Path, profiles: Path, token: str | None, db: str | None = None) -> Iterator[str]:
    import uvicorn

    from search.service import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir, profiles, token, db=db), host="127.0.0.1", port=port,
                                           log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    th.join(10)


@pytest.fixture(scope="module")
def url(measured_run: Path, profiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(measured_run, profiles, None, f"sqlite:///{tmp_path_factory.mktemp('svc') / 'service.db'}")


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as c:
        yield c


def test_endpoints(client: httpx.Client) -> None:
    from search.service import FrontOut, QueryOut

    d = client.get("/devices").json()
    assert d == {"model": "tiny", "devices": {"cpu-host": ["pytorch"]}, "variants": {"cpu-host": {"pytorch": ["float32"]}}}
    fr = FrontOut.model_validate(client.get("/fronts/cpu-host/pytorch").json())
    assert fr.variant == "float32" and fr.variants == ["float32"] and fr.variant_note is None
    front = client.get("/fronts/cpu-host/pytorch").json()["front"]
    assert front and all(p["latency_source"] in ("measured", "predicted") for p in front)
    assert all({"lo_ms", "hi_ms", "extrapolated", "latency_source"} <= p.keys() for p in front)
    slow = front[-1]["latency_ms"]
    q = client.get("/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": slow}).json()
    assert q["feasible"] and q["shape"] == front[-1] and q["export_command"].startswith("amoeba export")
    assert QueryOut.model_validate(q).variant == "float32" and "[float32]" in q["message"]
    named = client.get("/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": slow,
                                         "variant": "float32"}).json()
    assert named["shape"] == q["shape"] and named["variant"] == "float32"
    # the fast path (a well-formed /query) and the FastAPI route (here: an extra parameter) answer alike
    for b in (slow, slow / 3, 1e-6):
        params = {"device": "cpu-host", "flow": "pytorch", "budget_ms": b, "phase": "prefill"}
        fast, routed = client.get("/query", params=params), client.get("/query", params={**params, "x": "1"})
        assert fast.status_code == routed.status_code == 200 and fast.content == routed.content
    q = client.get("/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": 1e-6}).json()
    assert not q["feasible"] and q["fastest"] == front[0] and "fastest" in q["message"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/devices", "/query", "/fronts/{device}/{flow}"}


def test_query_by_a_share_of_the_full_model(client: httpx.Client, measured_run: Path, profiles: Path) -> None:
    from search.query import QueryIndex

    full = QueryIndex(measured_run, profiles).full_latency("cpu-host", "pytorch")
    for share in (0.6, 1.0, 5.0, 1e-6):
        params = {"device": "cpu-host", "flow": "pytorch", "phase": "decode"}
        by_share = client.get("/query", params={**params, "budget_share": share})
        by_ms = client.get("/query", params={**params, "budget_ms": share * full.ms})
        assert by_share.status_code == by_ms.status_code == 200, by_share.text
        assert by_share.json() == by_ms.json() and by_share.json()["budget_ms"] == pytest.approx(share * full.ms)


@pytest.mark.parametrize("params, status, reason", [
    ({"device": "nope", "flow": "pytorch", "budget_ms": 5}, 404, "known: cpu-host"),
    ({"device": "cpu-host", "flow": "onnx", "budget_ms": 5}, 404, "known: pytorch"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_ms": -1}, 422, "greater than 0"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_ms": "fast"}, 422, "number"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_ms": "nan"}, 422, "finite"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_ms": 5, "phase": "x"}, 422, "decode"),
    ({"device": "cpu-host", "flow": "pytorch"}, 422, "budget_ms"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_ms": 5, "budget_share": 0.5}, 422, "one of"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_share": 0}, 422, "greater than 0"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_share": "inf"}, 422, "finite"),
    ({"device": "nope", "flow": "pytorch", "budget_share": 0.5}, 404, "known: cpu-host"),
    ({"device": "cpu-host", "flow": "pytorch", "budget_ms": 5, "variant": "q4_0"}, 404, "known: float32"),
])
def test_bad_input_gets_4xx_with_a_reason(client: httpx.Client, params: dict, status: int, reason: str) -> None:
    r = client.get("/query", params=params)
    assert r.status_code == status and reason in r.text


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/query", "/fronts/{d}/{f}", "/devices"]),
       device=st.one_of(st.just("cpu-host"), st.text(max_size=30)),
       flow=st.one_of(st.just("pytorch"), st.text(max_size=30)),
       budget=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10), st.none()),
       phase=st.one_of(st.sampled_from(["decode", "prefill", "e2e"]), st.text(max_size=8), st.none()))
def test_fuzz_never_5xx(client: httpx.Client, path: str, device: str, flow: str, budget: object,
                        phase: object) -> None:
    params = {"device": device, "flow": flow}
    if budget is not None:
        params["budget_ms"] = str(budget)
    if phase is not None:
        params["phase"] = str(phase)
    if "{d}" in path:
        from urllib.parse import quote

        path = f"/fronts/{quote(device, safe='') or '_'}/{quote(flow, safe='') or '_'}"
    r = client.get(path, params=params)
    assert r.status_code < 500, (path, params, r.text)
    if r.status_code >= 400:
        assert r.json()["detail"]


def test_bearer_token(measured_run: Path, profiles: Path, tmp_path: Path) -> None:
    for base in _serve(measured_run, profiles, TOKEN, f"sqlite:///{tmp_path / 'service.db'}"):
        for path in ("/devices", "/docs", "/redoc", "/openapi.json", "/fronts/cpu-host/pytorch"):
            assert httpx.get(f"{base}{path}").status_code == 401, path
            assert httpx.get(f"{base}{path}", headers={"Authorization": "Bearer nope"}).status_code == 401, path
            assert httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        assert httpx.post(f"{base}/profiles", json={}).status_code == 401
        assert httpx.get(f"{base}/static/../devices").status_code == 401  # no way around the gate by path
        page = httpx.get(f"{base}/")  # the page's shell loads (it asks for the token) and holds no data
        assert page.status_code == 200 and "cpu-host" not in page.text


def test_errors_do_not_echo_long_input(client: httpx.Client) -> None:
    """A 10 KB unknown device name comes back clipped, in the path and in the query string."""
    from urllib.parse import quote

    name = "x" * 10_000
    r = client.get(f"/fronts/{quote(name)}/pytorch")
    assert r.status_code == 404 and "unknown device" in r.json()["detail"] and len(r.content) < 1000
    r = client.get("/query", params={"device": name, "flow": "pytorch", "budget_ms": 5})
    assert r.status_code == 422 and len(r.content) < 2000
    r = client.get("/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": name})
    assert r.status_code == 422 and len(r.content) < 2000


def test_truncated_accuracy_table_is_a_one_line_error(measured_run: Path, profiles: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    import os

    # a run folder of the earlier format whose accuracy.parquet is cut short, and a run whose store is
    bad, cut = tmp_path / "run", tmp_path / "cut"
    shutil.copytree(measured_run, bad, ignore=shutil.ignore_patterns("*.db", ".*"))
    data = (Path(__file__).parent / "fixtures" / "earlier_run" / "accuracy.parquet").read_bytes()
    (bad / "accuracy.parquet").write_bytes(data[: len(data) // 2])
    shutil.copytree(measured_run, cut, ignore=shutil.ignore_patterns(".*"))
    db = (cut / "amoeba.db").read_bytes()
    (cut / "amoeba.db").write_bytes(db[:100])
    for run, want in ((bad, "error: corrupt accuracy table"), (cut, "error: cannot open store")):
        for args in (["query", "--device", "cpu-host", "--flow", "pytorch", "--budget", "5ms"], ["plot"],
                     ["serve", "--port", "1"]):
            r = subprocess.run([sys.executable, "-m", "amoeba.cli", *args, "--run", str(run)],
                               env={**os.environ, "AMOEBA_PROFILES": str(profiles)},
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 2, (args, r.stderr[-2000:])
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(want), (args, r.stderr[-2000:])
