"""Query latency: in-process p50/p99, and over HTTP with concurrent clients against `amoeba serve`.

    python benchmarks/query_load.py --run runs/smollm2 --device cpu-host --flow pytorch
    python benchmarks/query_load.py --quick     # tiny run (built if missing), 10 clients for 5 s

The HTTP part starts `amoeba serve --run RUN` on 127.0.0.1 as a subprocess and runs N clients
(asyncio + httpx, one connection each) that each send random-budget /query requests until the
duration ends (bounded: at most --max-requests in all). Every non-200 answer or exception is
an error. Writes benchmarks/results/query_load.json (query_load_quick.json with --quick).
Goals: in-process p99 < 5 ms; HTTP p99 < 50 ms with 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def quick_run(work: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from search_efficiency import quick_setup

    strategy, root = quick_setup(work)
    run = work / "run"
    if not (run / "search.yaml").exists():
        env = {**os.environ, "AMOEBA_PROFILES": str(root), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "amoeba.cli", "search", "--strategy", str(strategy), "--device",
                        "cpu-host", "--flow", "pytorch", "--method", "random", "--trials", "80", "--run", str(run),
                        "--widths", "0.5:1:1/16", "--max-windows", "2", "--seq-len", "32"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return run, root


async def http_load(base: str, device: str, flow: str, lo: float, hi: float, clients: int, seconds: float,
                    max_requests: int) -> tuple[list[float], int, list[str]]:
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    sent = 0

    async def client(i: int) -> None:
        nonlocal sent
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                params = {"device": device, "flow": flow, "budget_ms": rng.uniform(lo, hi)}
                t0 = time.perf_counter()
                try:
                    r = await c.get("/query", params=params)
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:100]}")
                except Exception as e:  # noqa: BLE001 - every failure counts as an error
                    ok = False
                    errors.append(repr(e)[:100])
                if ok:
                    lat.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return lat, sent, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs/smollm2")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--device", default="cpu-host")
    ap.add_argument("--flow", default="pytorch")
    ap.add_argument("--queries", type=int, default=20000, help="in-process queries")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-requests", type=int, default=200000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.run, args.root = quick_run(Path(tempfile.gettempdir()) / "amoeba-bench-quick2")
        args.queries, args.clients, args.seconds = 5000, 10, 5.0
    from search.query import QueryIndex

    ix = QueryIndex(args.run, args.root)
    pts = ix.points(args.device, args.flow)
    lo, hi = min(p.latency_ms for p in pts) * 0.8, max(p.latency_ms for p in pts) * 1.2
    rng = random.Random(0)
    ts = []
    for _ in range(args.queries):
        b = rng.uniform(lo, hi)
        t0 = time.perf_counter()
        ix.best(args.device, args.flow, b)
        ts.append(time.perf_counter() - t0)
    inproc = pct(ts)
    print(f"in-process: {inproc['n']} queries, p50 {inproc['p50_ms'] * 1000:.1f} us, "
          f"p99 {inproc['p99_ms'] * 1000:.1f} us", flush=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ}
    if args.root is not None:
        env["AMOEBA_PROFILES"] = str(args.root)
    cmd = [sys.executable, "-m", "amoeba.cli", "serve", "--run", str(args.run), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        t_end = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/devices", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > t_end:
                raise SystemExit(f"server did not start: {server.stderr.read().decode()[-500:] if server.stderr else ''}")
            time.sleep(0.2)
        t0 = time.perf_counter()
        lat, sent, errors = asyncio.run(http_load(base, args.device, args.flow, lo, hi, args.clients, args.seconds,
                                                  args.max_requests))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(10)
    http = {**pct(lat), "clients": args.clients, "seconds": round(wall, 2), "requests": sent,
            "errors": len(errors), "error_samples": errors[:5], "throughput_rps": round(len(lat) / wall, 1)}
    print(f"HTTP: {args.clients} clients x {wall:.1f} s: {len(lat)} ok, {len(errors)} errors, "
          f"p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms, {http['throughput_rps']} req/s", flush=True)
    out = args.out or REPO / "benchmarks/results" / ("query_load_quick.json" if args.quick else "query_load.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "query_load", "quick": args.quick, "run": str(args.run), "device": args.device,
        "flow": args.flow, "stored_shapes": len(pts), "in_process": inproc, "http": http,
        "goals": {"in_process_p99_ms": 5.0, "http_p99_ms": 50.0, "http_errors": 0},
        "note": "clients and server share this machine's cores; run on a quiet machine for final numbers",
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.node()},
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
