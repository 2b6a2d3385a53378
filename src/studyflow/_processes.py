"""How studyflow starts local worker processes: forked from a warm forkserver, one BLAS thread.

Dask spawns each worker process as a fresh interpreter that imports distributed, then on its
first trial numpy, pandas, pyarrow, optuna and studyflow's worker: about a second of CPU per
worker, paid again for every worker. With the `forkserver` start method, one server process
imports them once and each worker is a fork of it. `warm_forkserver()` starts that server
early (the CLI calls it before its own imports), so its imports run on another core while the
driver imports and starts the scheduler. Workers stay separate processes: a trial that
segfaults or leaks still takes down only its worker.

This module imports nothing heavy: the CLI imports it first.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager

from studyflow.errors import StudyflowError

# Snakemake exports these as the rule's threads (8 with -c8), so every worker would run that many
# BLAS/OpenMP threads and the workers together would oversubscribe the cores many times over.
# One worker slot, one thread. The forkserver imports numpy with them set, which is when
# OpenBLAS sizes its thread pool, so the workers forked from it inherit one thread too.
# LOKY_MAX_CPU_COUNT caps joblib's cpu_count, so scikit-learn's `n_jobs=-1` (every core of the
# machine, whatever OMP_NUM_THREADS says) runs the trial's threads too.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "LOKY_MAX_CPU_COUNT")
ONE_THREAD_ENV = dict.fromkeys(THREAD_ENV_VARS, "1")
# `cluster.trial_threads` above one: what a worker's `worker._threads` sets its loaded pools to
TRIAL_THREADS_ENV = "STUDYFLOW_TRIAL_THREADS"


def thread_env(threads: int = 1) -> dict[str, str]:
    """The variables that give a worker process `threads` BLAS/OpenMP threads."""
    if threads == 1:
        return ONE_THREAD_ENV
    return {**dict.fromkeys(THREAD_ENV_VARS, str(threads)), TRIAL_THREADS_ENV: str(threads)}

# What a trial loop imports; a module missing here is skipped by the forkserver. The first one
# turns garbage collection off for the imports (`_preload_begin`). The last one imports the
# study's objective module (named in PRELOAD_ENV_VAR), so a worker's first trial does not pay for
# its imports (scikit-learn: ~0.5 s per worker) either, then freezes what the imports made and
# turns collection on again. pandas and pyarrow (~0.4 s of
# CPU, while the driver imports on the other core) only for a study that reads a staged table
# (`TABLE_MODULES`); an objective that uses them imports them through its own module.
WORKER_MODULES = ["studyflow._preload_begin", "distributed", "numpy", "optuna", "studyflow.worker", "studyflow.cli",
                  "studyflow._preload"]
TABLE_MODULES = ["pandas", "pyarrow", "pyarrow.parquet"]
PRELOAD_ENV_VAR = "STUDYFLOW_PRELOAD"

START_METHOD = "forkserver"
NANNY_PROCESS_NAME = "Dask Worker process (from Nanny)"  # what distributed's nannies name their worker process
_preloaded: list[list[str]] = []  # the objective modules the first forkserver was asked to import


class ForkserverDiedError(StudyflowError):
    """The local workers' forkserver died while a nanny asked it for a worker: importing what
    workers preload (the objective's module, native code at import) crashed it, each time it
    was started again."""

    def __init__(self, objective_modules: list[str]) -> None:
        self.objective_modules = objective_modules
        super().__init__(f"the workers' forkserver died importing what they preload: {objective_modules}")


def forkserver_died(exc: BaseException) -> bool:
    """Whether `exc` (a nanny's or a cluster's failure to start) came of the forkserver
    closing its socket under a request: multiprocessing's `EOFError('unexpected EOF')`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, EOFError) and "unexpected EOF" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def preloaded_objective_modules() -> list[str]:
    """The objective modules this process's forkserver was first asked to import."""
    return list(_preloaded[0]) if _preloaded else []


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def warm_forkserver(objective_modules: list[str] | None = None, tables: bool = False) -> None:
    """Start this process's forkserver now, importing `WORKER_MODULES` (`TABLE_MODULES` too
    with `tables`: the study reads a staged table; and the objective's modules, found on this
    process's `sys.path`) with one BLAS/OpenMP thread in its environment. Idempotent: a running
    forkserver keeps what it imported. Returns at once (the server imports in the background;
    the first fork waits for it)."""
    from multiprocessing import forkserver

    _workers_skip_main()
    if not _preloaded:
        _preloaded.append(list(objective_modules or []))
    modules = WORKER_MODULES[:-1] + (TABLE_MODULES if tables else []) + WORKER_MODULES[-1:]
    multiprocessing.get_context(START_METHOD).set_forkserver_preload(modules)
    with _environ({**ONE_THREAD_ENV, PRELOAD_ENV_VAR: ",".join(objective_modules or [])}):
        forkserver.ensure_running()


def _workers_skip_main() -> None:
    """Have worker processes started by nannies not run this process's `__main__` again.

    multiprocessing runs the parent's main script in every process it starts (as
    `__mp_main__`), so a script calling `studyflow.optimize` at its top level, as most Optuna
    scripts call `study.optimize`, started a cluster in each worker and failed, and one with a
    main guard still ran its top level (its imports, its data loading) once more per worker.
    Workers need none of it: objectives and values from `__main__` travel by value (cloudpickle),
    as from a notebook, which has no script to run. Other processes keep multiprocessing's way."""
    from multiprocessing import spawn

    prepare = spawn.get_preparation_data
    if getattr(prepare, "skips_main_for_workers", False):
        return

    def get_preparation_data(name: str) -> dict[str, object]:
        data = prepare(name)
        if name == NANNY_PROCESS_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data.skips_main_for_workers = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def worker_memory_limit() -> int:
    """Each local worker's memory limit: the machine's (or its cgroup's), as a process under
    plain Optuna has. Dask's default splits it (memory / workers; a GPU worker's, memory /
    cores) and its nanny kills a worker at 95% of that share, so a trial needing more failed
    as "WorkerLost" on a machine with room. The nanny still stops a worker that alone takes 95%
    of the machine, before the kernel's OOM killer picks a process, the driver perhaps."""
    from distributed.system import MEMORY_LIMIT

    return MEMORY_LIMIT


def worker_env(threads: int = 1) -> dict[str, str]:
    """The environment a forked worker runs with: this process's as it is now (the forkserver
    keeps the one it started with, where a spawned worker got the current one, so a variable
    set since, e.g. by a test or a notebook, would otherwise not reach the objective), with one
    BLAS/OpenMP thread, or `threads` (`cluster.trial_threads`)."""
    env = {**os.environ, **thread_env(threads)}
    if threads == 1:
        env.pop(TRIAL_THREADS_ENV, None)  # this process's own, if it runs in a worker of such a study
    return env


def forked_workers_config() -> dict[str, str]:
    """The Dask setting that makes nannies start their workers from the forkserver."""
    warm_forkserver()
    return {"distributed.worker.multiprocessing-method": START_METHOD}
