"""The on-disk cache (``$AMOEBA_CACHE``, default ``~/.cache/amoeba``): one writer, a size cap, LRU eviction.

Everything the toolkit caches goes through :func:`cached`: random-weight GGUF files
(``gguf/``), ONNX exports (``onnx/``), de-quantised HF copies of GGUF models (``models/``) and
the HF checkpoints / engines of the GPU flows (``trtllm/``, ``mlc/``).

Layout. An *entry* is one file or folder under a namespace folder (``<root>/<namespace>/<name>``).
A top-level item that is not one of :data:`NAMESPACES` is an entry itself (de-quantised copies
of an older layout lived there). A cache folder given explicitly (a flow's ``cache_dir`` option,
``$AMOEBA_GGUF_CACHE``) is a root whose children are entries.

Writes are atomic: :func:`cached` builds into ``<namespace>/.tmp-<pid>-<random>`` and
``os.replace``\\ s it onto the entry, so a killed writer never leaves a half entry under a key.
Its temp is removed by the next process that uses the cache (the pid in the name is no longer
alive; temps of an unknown owner are removed after :data:`STALE_TMP_SECONDS`).

Budget. After each write, least-recently-used entries are removed until the cache fits the
cap: ``$AMOEBA_CACHE_MAX_GB`` (default 20 GB; ``amoeba cache trim --max-gb`` trims now). *Use* is
recorded by touching the entry's mtime on every hit. Entries this process has pinned (an
artifact a flow built and has not closed, :func:`release` unpins) and the entry just written
are never evicted; when only those remain the cache stays over the cap and a warning says so.
Another process's entry may be evicted while it runs: on POSIX an open or memory-mapped file
stays readable after its unlink, so a running llama.cpp or ONNX Runtime session is not broken;
that process rebuilds the entry the next time it asks for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from amoeba_core.errors import AmoebaError

log = logging.getLogger(__name__)

NAMESPACES: tuple[str, ...] = ("gguf", "onnx", "models", "trtllm", "mlc")
DEFAULT_MAX_GB = 20.0
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 6 * 3600.0

_pinned: set[Path] = set()
_swept: set[Path] = set()


def cache_root() -> Path:
    """``$AMOEBA_CACHE`` or ``~/.cache/amoeba``."""
    env = os.environ.get("AMOEBA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "amoeba"


def max_bytes(max_gb: float | str | None = None) -> int:
    """The cap in bytes: ``max_gb``, else ``$AMOEBA_CACHE_MAX_GB``, else 20 GB."""
    raw = max_gb if max_gb is not None else os.environ.get("AMOEBA_CACHE_MAX_GB", DEFAULT_MAX_GB)
    try:
        gb = float(raw)
    except (TypeError, ValueError):
        raise AmoebaError(f"cache size cap must be a number of GB, got {raw!r} (AMOEBA_CACHE_MAX_GB)") from None
    if not gb >= 0 or gb == float("inf"):
        raise AmoebaError(f"cache size cap must be a finite number of GB >= 0, got {raw!r}")
    return int(gb * 1e9)


@dataclass(frozen=True)
class Entry:
    path: Path
    namespace: str  # "" for an entry directly under the root
    size: int  # bytes (a folder: its files, recursively)
    last_used: float  # mtime of the entry itself, set on every use

    @property
    def name(self) -> str:
        return self.path.name


def _size(p: Path) -> int:
    try:
        st = p.lstat()
    except FileNotFoundError:
        return 0
    if not p.is_dir() or p.is_symlink():
        return st.st_size
    total = 0
    for dirpath, _, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def _is_tmp(p: Path) -> bool:
    return p.name.startswith(TMP_PREFIX)


def _containers(root: Path) -> list[tuple[str, Path]]:
    out = [("", root)]
    out += [(ns, root / ns) for ns in NAMESPACES if (root / ns).is_dir()]
    return out


def entries(root: Path | None = None) -> list[Entry]:
    """Every entry under ``root`` (temps excluded), least recently used first."""
    root = Path(root) if root is not None else cache_root()
    out: list[Entry] = []
    for ns, folder in _containers(root):
        try:
            children = list(folder.iterdir())
        except FileNotFoundError:
            continue
        for p in children:
            if _is_tmp(p) or (ns == "" and p.name in NAMESPACES and p.is_dir()):
                continue
            try:
                used = p.lstat().st_mtime
            except FileNotFoundError:
                continue
            out.append(Entry(p, ns, _size(p), used))
    return sorted(out, key=lambda e: (e.last_used, str(e.path)))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_is_orphan(p: Path, now: float) -> bool:
    rest = p.name[len(TMP_PREFIX):]
    head = rest.split("-", 1)[0]
    try:
        age = now - p.lstat().st_mtime
    except FileNotFoundError:
        return False
    if head.isdigit():
        return not _pid_alive(int(head)) or age > STALE_TMP_SECONDS
    return age > STALE_TMP_SECONDS  # no owner in the name (an older writer): only when old


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def sweep_temps(root: Path | None = None) -> list[Path]:
    """Remove temps left by writers that were killed (owner pid gone, or older than 6 h)."""
    root = Path(root) if root is not None else cache_root()
    now = time.time()
    gone: list[Path] = []
    for _, folder in _containers(root):
        try:
            children = list(folder.iterdir())
        except FileNotFoundError:
            continue
        for p in children:
            if _is_tmp(p) and _tmp_is_orphan(p, now):
                _remove(p)
                gone.append(p)
    if gone:
        log.info("removed %d temp(s) of killed cache writers under %s", len(gone), root)
    return gone


def _sweep_once(root: Path) -> None:
    key = root.resolve()
    if key not in _swept:
        _swept.add(key)
        sweep_temps(root)


def pin(path: Path) -> None:
    """Protect an entry from eviction by this process until :func:`release`."""
    _pinned.add(Path(path).resolve())


def release(path: Path | None) -> None:
    if path is not None:
        _pinned.discard(Path(path).resolve())


def touch(path: Path) -> None:
    """Record a use (LRU order is the entry's mtime)."""
    try:
        os.utime(path)
    except OSError as e:  # read-only cache: LRU order just goes stale
        log.debug("cannot touch %s: %s", path, e)


def evict(root: Path | None = None, cap: int | None = None, keep: Iterable[Path] = ()) -> list[Entry]:
    """Remove least-recently-used entries until the total fits ``cap``; returns what was removed.

    Pinned entries and ``keep`` are never removed.
    """
    root = Path(root) if root is not None else cache_root()
    cap = max_bytes() if cap is None else cap
    protected = _pinned | {Path(k).resolve() for k in keep}
    es = entries(root)
    total = sum(e.size for e in es)
    removed: list[Entry] = []
    for e in es:
        if total <= cap:
            break
        if e.path.resolve() in protected:
            continue
        _remove(e.path)
        total -= e.size
        removed.append(e)
        log.info("cache over %.1f GB: evicted %s (%.1f MB)", cap / 1e9, e.path, e.size / 1e6)
    if total > cap:
        log.warning("cache %s holds %.2f GB in entries in use, above its cap of %.2f GB (AMOEBA_CACHE_MAX_GB)",
                    root, total / 1e9, cap / 1e9)
    return removed


def clear(root: Path | None = None, namespace: str | None = None) -> list[Entry]:
    """Remove every entry (of one namespace if given) not pinned by this process, and orphan temps."""
    root = Path(root) if root is not None else cache_root()
    sweep_temps(root)
    removed = []
    for e in entries(root):
        if namespace is not None and e.namespace != namespace:
            continue
        if e.path.resolve() in _pinned:
            continue
        _remove(e.path)
        removed.append(e)
    return removed


def cached(
    name: str,
    make: Callable[[Path], object],
    *,
    namespace: str = "",
    root: Path | str | None = None,
    folder: bool = False,
    complete: Callable[[Path], bool] | None = None,
    cap: int | None = None,
) -> Path:
    """The entry ``<root>/<namespace>/<name>``, made by ``make(tmp_path)`` on a miss.

    ``folder``: the entry is a directory (``make`` fills an existing empty folder) rather
    than a file (``make`` writes the path it is given). ``complete(path)`` says whether an
    existing entry is usable (default: it exists). On a hit the entry is touched; either way
    it is pinned (see :func:`release`). After a write the cache is trimmed to ``cap``.
    """
    if namespace and namespace not in NAMESPACES:
        raise ValueError(f"unknown cache namespace {namespace!r}")
    base = Path(root) if root is not None else cache_root()
    d = base / namespace if namespace else base
    target = d / name
    ok = complete or (lambda p: p.exists())
    _sweep_once(base)
    if ok(target):
        touch(target)
        pin(target)
        return target
    d.mkdir(parents=True, exist_ok=True)
    prefix = f"{TMP_PREFIX}{os.getpid()}-"
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=d))
    else:
        fd, t = tempfile.mkstemp(prefix=prefix, suffix=Path(name).suffix, dir=d)
        os.close(fd)
        tmp = Path(t)
    try:
        make(tmp)
        try:
            os.replace(tmp, target)  # atomic: a killed writer never leaves a half entry under the key
        except OSError:
            if not (target.is_dir() and not target.is_symlink()):
                raise
            if not ok(target):  # an incomplete folder under the key: replace it
                shutil.rmtree(target)
                os.replace(tmp, target)
            # else another process finished the same entry first; ours is dropped below
        touch(target)
    finally:
        if tmp.exists():
            _remove(tmp)
    pin(target)
    evict(base, cap, keep=(target,))
    return target
