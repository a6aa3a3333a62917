"""One inter-process lock for every file the project appends to (tables, caches)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created, with its folder, if missing)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def read_snapshot(path: Path) -> tuple[bytes, int]:
    """The bytes of ``path`` read through one open file, and that file's mtime (ns).

    Writers replace tables atomically (temp file, then ``os.replace``), but a reader that opens
    the path twice (pyarrow's dataset reader does: footer, then pages) can get the footer of one
    version and the pages of the next ("Couldn't deserialize thrift"). One descriptor pins one
    version.
    """
    with open(path, "rb") as f:
        return f.read(), os.fstat(f.fileno()).st_mtime_ns
