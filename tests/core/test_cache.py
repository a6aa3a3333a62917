"""The on-disk cache with real files: atomic writes, LRU eviction under a tiny cap, pins, killed writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from amoeba_core import cache
from amoeba_core.errors import AmoebaError

KB = 1000


def _writer(n: int, calls: list[str] | None = None, tag: str = ""):  # noqa: ANN202
    def make(tmp: Path) -> None:
        if calls is not None:
            calls.append(tag)
        tmp.write_bytes(b"x" * n)

    return make


def _age(p: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(p, (t, t))


@pytest.fixture(autouse=True)
def _no_pins():
    yield
    cache._pinned.clear()


def test_miss_writes_once_then_hits_and_touches(tmp_path: Path) -> None:
    calls: list[str] = []
    p = cache.cached("a.bin", _writer(KB, calls, "a"), root=tmp_path, cap=10 * KB)
    assert p == tmp_path / "a.bin" and p.read_bytes() == b"x" * KB and calls == ["a"]
    _age(p, 3600)
    old = p.stat().st_mtime
    assert cache.cached("a.bin", _writer(KB, calls, "a"), root=tmp_path, cap=10 * KB) == p
    assert calls == ["a"]  # a hit: not rebuilt
    assert p.stat().st_mtime > old + 3000  # the hit counts as a use
    assert [x.name for x in tmp_path.iterdir()] == ["a.bin"]  # no temp left


def test_lru_eviction_to_the_cap(tmp_path: Path) -> None:
    for i, name in enumerate("abc"):
        cache.cached(f"{name}.bin", _writer(KB), root=tmp_path, cap=10 * KB)
        cache.release(tmp_path / f"{name}.bin")
        _age(tmp_path / f"{name}.bin", 300 - 100 * i)  # a oldest, c newest
    cache.cached("a.bin", _writer(KB), root=tmp_path, cap=10 * KB)  # use a again: now b is the oldest
    cache.release(tmp_path / "a.bin")
    cache.cached("d.bin", _writer(KB), root=tmp_path, cap=3 * KB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.bin", "d.bin"]
    assert sum(e.size for e in cache.entries(tmp_path)) == 3 * KB
    cache.cached("e.bin", _writer(2 * KB), root=tmp_path, cap=3 * KB)  # c and a go, newest first kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "e.bin"]


def test_pinned_and_new_entries_are_never_evicted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = cache.cached("a.bin", _writer(2 * KB), root=tmp_path, cap=10 * KB)  # pinned: "in use"
    _age(a, 600)
    b = cache.cached("b.bin", _writer(2 * KB), root=tmp_path, cap=10 * KB)
    cache.release(b)
    _age(b, 300)
    cache.cached("c.bin", _writer(2 * KB), root=tmp_path, cap=KB)
    assert a.exists() and not b.exists() and (tmp_path / "c.bin").exists()
    assert "above its cap" in caplog.text
    cache.release(a)
    cache.evict(tmp_path, cap=2 * KB)
    assert not a.exists() and (tmp_path / "c.bin").exists()  # c is the most recent


def test_folder_entries_and_namespaces(tmp_path: Path) -> None:
    def make(d: Path) -> None:
        (d / "sub").mkdir()
        (d / "sub" / "w.bin").write_bytes(b"y" * 3 * KB)
        (d / "done").write_text("1")

    def complete(d: Path) -> bool:
        return (d / "done").is_file()

    p = cache.cached("exp1", make, namespace="onnx", root=tmp_path, folder=True, complete=complete, cap=10 * KB)
    assert p == tmp_path / "onnx" / "exp1" and complete(p)
    (p / "done").unlink()  # an incomplete folder under the key is rebuilt
    assert complete(cache.cached("exp1", make, namespace="onnx", root=tmp_path, folder=True, complete=complete))
    (tmp_path / "legacy-model").mkdir()  # a top-level folder of an older layout is one entry
    (tmp_path / "legacy-model" / "w").write_bytes(b"z" * KB)
    es = {(e.namespace, e.name): e.size for e in cache.entries(tmp_path)}
    assert es == {("onnx", "exp1"): 3 * KB + 1, ("", "legacy-model"): KB}
    with pytest.raises(ValueError):
        cache.cached("x", make, namespace="nope", root=tmp_path)


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from amoeba_core import cache

    def make(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write

    cache.cached("big.gguf", make, namespace="gguf", root=Path(sys.argv[1]))
    """
)


def test_killed_writer_leaves_no_temp_after_next_run(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True, timeout=60)
    assert r.returncode == -9
    d = tmp_path / "gguf"
    left = [p.name for p in d.iterdir()]
    assert len(left) == 1 and left[0].startswith(cache.TMP_PREFIX)  # the half file, never under the key
    assert not (d / "big.gguf").exists()
    live = d / f"{cache.TMP_PREFIX}{os.getpid()}-live.gguf"  # a temp of a running writer is kept
    live.write_bytes(b"w")
    assert cache.entries(tmp_path) == []  # temps are not entries
    p = cache.cached("big.gguf", _writer(KB), namespace="gguf", root=tmp_path)  # the next run
    assert sorted(x.name for x in d.iterdir()) == sorted(["big.gguf", live.name]) and p.stat().st_size == KB
    live.unlink()


def test_old_unowned_temps_are_swept(tmp_path: Path) -> None:
    old, new = tmp_path / ".tmp-abc.gguf", tmp_path / ".tmp-def.gguf"  # names of the previous writers
    old.write_bytes(b"1")
    new.write_bytes(b"2")
    _age(old, cache.STALE_TMP_SECONDS + 60)
    assert cache.sweep_temps(tmp_path) == [old]
    assert new.exists()


def test_cap_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMOEBA_CACHE_MAX_GB", raising=False)
    assert cache.max_bytes() == 20 * 10**9
    monkeypatch.setenv("AMOEBA_CACHE_MAX_GB", "0.5")
    assert cache.max_bytes() == 5 * 10**8
    monkeypatch.setenv("AMOEBA_CACHE_MAX_GB", "lots")
    with pytest.raises(AmoebaError, match="AMOEBA_CACHE_MAX_GB"):
        cache.max_bytes()


def _amoeba(root: Path, *args: str, cap: str = "1") -> subprocess.CompletedProcess:
    env = {**os.environ, "AMOEBA_CACHE": str(root), "AMOEBA_CACHE_MAX_GB": cap}
    return subprocess.run([sys.executable, "-m", "amoeba", "cache", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_cache_cli_show_trim_clear(tmp_path: Path) -> None:
    (tmp_path / "gguf").mkdir()
    (tmp_path / "onnx" / "e1").mkdir(parents=True)
    (tmp_path / "gguf" / "old.gguf").write_bytes(b"o" * 4 * KB)
    (tmp_path / "gguf" / "new.gguf").write_bytes(b"n" * 4 * KB)
    (tmp_path / "onnx" / "e1" / "model.onnx").write_bytes(b"m" * 2 * KB)
    _age(tmp_path / "gguf" / "old.gguf", 7200)
    r = _amoeba(tmp_path, "show")
    assert r.returncode == 0, r.stderr
    assert "3 entries" in r.stdout and r.stdout.index("old.gguf") < r.stdout.index("new.gguf")
    r = _amoeba(tmp_path, "trim", "--max-gb", "0.000007")
    assert r.returncode == 0 and "evicted 1 entries" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "gguf" / "old.gguf").exists() and (tmp_path / "gguf" / "new.gguf").exists()
    r = _amoeba(tmp_path, "clear", "--namespace", "onnx")
    assert r.returncode == 0 and not (tmp_path / "onnx" / "e1").exists() and (tmp_path / "gguf" / "new.gguf").exists()
    r = _amoeba(tmp_path, "clear", "--namespace", "bogus")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown cache part 'bogus'")
    r = _amoeba(tmp_path, "show", cap="x")
    assert r.returncode == 2 and r.stderr.startswith("error: cache size cap")
    assert _amoeba(tmp_path, "clear").returncode == 0 and cache.entries(tmp_path) == []


def test_random_gguf_goes_through_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    from amoeba_core.shape import ModelGeometry
    from profiler.flows._gguf import cached_random_gguf

    monkeypatch.delenv("AMOEBA_GGUF_CACHE", raising=False)
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path))
    g = ModelGeometry.preset("tiny")
    a = cached_random_gguf(g, "f16")
    assert a.parent == tmp_path / "gguf" and a.stat().st_size > 0
    cache.release(a)
    _age(a, 60)
    monkeypatch.setenv("AMOEBA_CACHE_MAX_GB", str(a.stat().st_size * 1.5 / 1e9))  # room for one file
    b = cached_random_gguf(g, "q8_0")
    assert b.exists() and not a.exists()
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == [b.name]
