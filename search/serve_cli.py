"""`amoeba serve | push`: the shared service and uploads to it (thin wrappers; heavy imports inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from amoeba_core.errors import AmoebaError

# options shared with search/cli.py
RUN = typer.Option(Path("runs/default"), "--run", help="Run folder (search.yaml; its records and study in amoeba.db).")
ROOT = typer.Option(None, "--root", help="Profiles folder (default: $AMOEBA_PROFILES or ./device_profiles).")


def serve(
    run: Path = RUN,
    host: str = typer.Option("127.0.0.1", help="Bind address (a non-loopback address needs --token)."),
    port: int = typer.Option(8000, min=1, max=65535),
    token: Optional[str] = typer.Option(None, envvar="AMOEBA_TOKEN", help="Bearer token required by every request."),
    db: Optional[str] = typer.Option(None, "--db", help="The store to serve: sqlite:///... or postgresql://user@host/db "
                                                        "(default: the profiles root's store, or $AMOEBA_STORE)."),
    workers: int = typer.Option(1, min=1, max=64, help="Worker processes (each answers from its own index)."),
    refresh_s: float = typer.Option(0.5, "--refresh-s", min=0.0, help="How often a worker polls for pushed data."),
    root: Optional[Path] = ROOT,
) -> None:
    """Serve /devices, /fronts/{device}/{flow}, /query (+ POST /profiles, /runs for `amoeba push`); docs at /docs."""
    import json
    import os

    import uvicorn

    from search.db import FleetDB, default_url
    from search.service import create_app, is_loopback, seed

    if not is_loopback(host) and not token:
        raise AmoebaError(f"binding {host} exposes the service beyond this machine: set --token (or AMOEBA_TOKEN)")
    url = db or default_url(root)
    if workers == 1:
        uvicorn.run(create_app(run, root, token, db=url, refresh_s=refresh_s), host=host, port=port,
                    log_level="warning")
        return
    store = FleetDB(url)  # merge the local files once, then start the workers
    seed(store, run, root)
    create_app(run, root, None, warm=False, db=url, seed_local=False).state.served.close()  # fail here, not in N workers
    store.dispose()
    os.environ["AMOEBA_SERVE"] = json.dumps({"run": str(run), "root": str(root) if root else None, "db": url,
                                             "refresh_s": refresh_s})
    if token:
        os.environ["AMOEBA_TOKEN"] = token
    uvicorn.run("search.service:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


def push(
    server: Optional[str] = typer.Option(None, help="URL of a running `amoeba serve`, e.g. http://10.0.0.5:8000."),
    token: Optional[str] = typer.Option(None, envvar="AMOEBA_TOKEN", help="The server's bearer token."),
    device: Optional[list[str]] = typer.Option(None, help="Device(s) to push (default: every device under --root)."),
    as_name: Optional[str] = typer.Option(None, "--as", help="Push the (one) device under this name, e.g. edge-1."),
    run: Optional[Path] = typer.Option(None, "--run", help="Also push this run's search.yaml and accuracy records."),
    db: Optional[str] = typer.Option(None, "--db", help="Write straight into this database instead of a server."),
    root: Optional[Path] = ROOT,
) -> None:
    """Upload device profiles (spec + latency tables with provenance) and run results to a shared service."""
    from rich.console import Console

    from profiler.device import list_devices
    from search.fleet import profile_payload, push_profile, push_run, run_payload

    if bool(server) == bool(db):
        raise AmoebaError("give one of --server URL (a running `amoeba serve`) or --db URL (the shared database)")
    names = list(device or []) or ([] if run is not None and not list_devices(root) else list_devices(root))
    if not names and run is None:
        raise AmoebaError("nothing to push: no device under the profiles root (see `amoeba devices`) and no --run")
    if as_name and len(names) != 1:
        raise AmoebaError(f"--as renames one device; pushing {len(names)} ({', '.join(names)}): pick one with --device")
    store = None
    if db:
        from search.db import FleetDB

        store = FleetDB(db)
    console = Console(highlight=False, soft_wrap=True)
    for name in names:
        payload = profile_payload(name, root, as_name)
        rows = sum(len(t["rows"]) for t in payload["tables"])
        rep = push_profile(payload, server, token, store)
        console.print(f"{name}{' as ' + as_name if as_name else ''}: {len(payload['tables'])} table(s), {rows} rows -> "
                      f"{rep['inserted']} new, {rep['present']} already there, {rep['conflicts']} conflicting"
                      + (f" (kept the stored rows: {', '.join(rep['conflict_keys'][:3])})" if rep["conflicts"] else ""))
    if run is not None:
        payload = run_payload(run)
        rep = push_run(payload, server, token, store)
        console.print(f"run {payload['run']}: {len(payload['records'])} accuracy records -> {rep['inserted']} new, "
                      f"{rep['present']} already there")
