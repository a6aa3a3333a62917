"""`amoeba cache show | clear | trim`: the on-disk cache of GGUF files, ONNX exports and model copies."""

from __future__ import annotations

import time
from typing import Optional

import typer

from amoeba_core.errors import AmoebaError

cache_app = typer.Typer(
    help="Show, clear or trim the cache ($AMOEBA_CACHE, default ~/.cache/amoeba; cap $AMOEBA_CACHE_MAX_GB, "
    "default 20).",
    no_args_is_help=True,
)


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB"


@cache_app.command("show")
def show() -> None:
    """List cache entries, least recently used (first to be evicted) first, with the total and the cap."""
    from rich.console import Console
    from rich.table import Table

    from amoeba_core import cache

    root = cache.cache_root()
    es = cache.entries(root)
    total = sum(e.size for e in es)
    t = Table(title=f"{root}: {len(es)} entries, {_gb(total)} of {_gb(cache.max_bytes())} (eviction order)")
    for c in ("namespace", "entry", "size", "last used"):
        t.add_column(c)
    now = time.time()
    for e in es:
        age = now - e.last_used
        ago = f"{age / 86400:.1f} d ago" if age >= 86400 else f"{age / 3600:.1f} h ago"
        t.add_row(e.namespace or "-", e.name, _gb(e.size), ago)
    Console().print(t)


@cache_app.command("clear")
def clear(
    namespace: Optional[str] = typer.Option(None, help="Only this part: gguf, onnx, models, trtllm or mlc."),
) -> None:
    """Remove cache entries (and temps of killed writers); they are rebuilt when next needed."""
    from amoeba_core import cache

    if namespace is not None and namespace not in cache.NAMESPACES:
        raise AmoebaError(f"unknown cache part {namespace!r}; known: {', '.join(cache.NAMESPACES)}")
    gone = cache.clear(namespace=namespace)
    typer.echo(f"removed {len(gone)} entries, {_gb(sum(e.size for e in gone))} from {cache.cache_root()}")


@cache_app.command("trim")
def trim(
    max_gb: Optional[float] = typer.Option(None, help="Cap in GB (default: $AMOEBA_CACHE_MAX_GB or 20)."),
) -> None:
    """Evict least-recently-used entries until the cache fits the cap (done after every write anyway)."""
    from amoeba_core import cache

    cap = cache.max_bytes(max_gb)
    cache.sweep_temps()
    gone = cache.evict(cap=cap)
    left = sum(e.size for e in cache.entries())
    typer.echo(f"evicted {len(gone)} entries ({_gb(sum(e.size for e in gone))}); {_gb(left)} left, cap {_gb(cap)}")
