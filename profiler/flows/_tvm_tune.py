"""TVM MetaSchedule tuning for :mod:`profiler.flows.tvm`: the kernels worth tuning, a pooled builder, ``tune``.

Split from the flow module; the names stay importable from ``profiler.flows.tvm``.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("profiler.flows.tvm")

TUNED_OPS: tuple[str, ...] = ("matmul", "softmax", "mean")  # substrings of the kernels worth tuning


@contextlib.contextmanager
def _cheap_inspect_stack() -> Iterator[None]:
    """``inspect.stack()`` without source-file lookups, while TVMScript parses its intrinsics.

    ``@T.prim_func`` calls ``inspect.stack()`` (which resolves every frame's module by scanning
    ``sys.modules``) for each of the hundreds of tensor intrinsics in ``tvm.s_tir.tensor_intrin``;
    that import took 255 s on this 2-core machine under load, 8.7 s with this stack.
    """
    orig = inspect.stack

    def stack(context: int = 1) -> list[inspect.FrameInfo]:
        out, f = [], sys._getframe(1)
        while f is not None:
            fn, ln = f.f_code.co_filename, f.f_lineno
            line = linecache.getline(fn, ln)
            out.append(inspect.FrameInfo(f, fn, ln, f.f_code.co_name, [line] if line else None, 0 if line else None))
            f = f.f_back
        return out

    inspect.stack = stack  # type: ignore[assignment]
    try:
        yield
    finally:
        inspect.stack = orig  # type: ignore[assignment]


def _preimport() -> None:
    """Import the tensor intrinsics MetaSchedule loads (also the builder-worker initializer)."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with _cheap_inspect_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401


def _pre_tuning(mod: Any, target: Any) -> Any:
    """The passes the ``static_shape_tuning`` pipeline runs before it looks kernels up."""
    import tvm
    from tvm import relax

    with target:
        return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                         relax.transform.CanonicalizeBindings(),
                                         relax.get_pipeline("zero")])(mod)


def kernels_to_tune(mod: Any, target: Any, db: Any) -> tuple[list[Any], int]:
    """(extracted tasks of ``mod`` worth tuning that have no record in ``db``, count already there)."""
    from tvm.s_tir import meta_schedule as ms

    todo, done = [], 0
    for task in ms.relax_integration.extract_tasks(_pre_tuning(mod, target), target):
        if not any(op in task.task_name for op in TUNED_OPS):
            continue
        kernel = task.dispatched[0]
        if db.has_workload(kernel) and db.get_top_k(db.commit_workload(kernel), 1):
            done += 1
        else:
            todo.append(task)
    return todo, done


def pooled_builder(workers: int, timeout_sec: float, restart_every: int = 8) -> Any:
    """A MetaSchedule builder like ``LocalBuilder`` that keeps its worker processes between ``build`` calls.

    ``LocalBuilder`` starts a new process pool for every call (upstream's guard against a memory leak in
    long-lived workers), and each worker pays :func:`_preimport` (import tvm and its tensor intrinsics):
    about 12 s per call on a 2-core EPYC VM, while a tuning round of one candidate builds in under a
    second. MetaSchedule calls the builder once per task and round, so a 10-kernel tuning at 1 trial spent
    129 of its 216 s in builder calls (42 s with this builder; tests/flows_tvm, one run each). This one
    restarts its pool every ``restart_every`` calls instead; ``close()`` ends it. Timeouts and exceptions
    are reported per candidate as ``LocalBuilder`` does."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool: Any = None
            self.calls = 0

        def close(self) -> None:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

        def build(self, build_inputs: list) -> list:
            if self.pool is None or self.calls >= restart_every:
                self.close()
                self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_sec, initializer=_preimport)
                self.calls = 0
            self.calls += 1
            results = []
            jobs = [(None, None, x.mod, x.target, _serialize_params(x.params)) for x in build_inputs]
            for r in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {timeout_sec} seconds"))
                else:
                    results.append(BuilderResult(None, f"LocalBuilder: An exception occurred\n{r.value}"))
            return results

    return PooledBuilder()


def tune(mod: Any, target: Any, work_dir: Path, trials: int, threads: int,
         build_timeout: float = 90.0, run_timeout: float = 60.0) -> tuple[int, int]:
    """MetaSchedule, ``trials`` candidates per kernel not yet in the database; (tuned, skipped)."""
    from tvm.s_tir import meta_schedule as ms

    _preimport()
    db = ms.database.JSONDatabase(work_dir=str(work_dir), module_equality="structural")
    todo, done = kernels_to_tune(mod, target, db)
    if not todo:
        return 0, done
    # MetaSchedule prints every scheduling step to stdout at its logger's level; keep the console
    # to warnings (its log files under work_dir/logs still get everything)
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    log.warning("tvm: tuning %d kernel(s) x %d trials (minutes; %d already tuned); log: %s", len(todo), trials, done,
                work_dir / "logs")
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        todo, work_dir=str(work_dir), num_threads=max(1, threads))
    builder = pooled_builder(max(1, threads), build_timeout)
    try:
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials * len(todo),
            max_trials_per_task=trials, num_trials_per_iter=min(trials, 16), database=db,
            builder=builder, runner=ms.runner.LocalRunner(timeout_sec=run_timeout),
        )
    finally:
        builder.close()
    return len(todo), done
