"""The programs a worker's trials started end with the worker.

An objective that shells out (a training script, a simulator) starts processes of its own. When
the worker goes (a hung trial's timeout restarts it, the run was stopped, the cluster closes),
Dask stops the worker's process and nothing else: a program its trial had started ran on,
holding its GPU or cores, past the study. A trial loop adds `ChildReaper` to its worker's
plugins (on a worker under a nanny, whose process is the worker's own); its `teardown`, at the
worker's close and before the worker waits for its task threads, ends every process below the
worker's. A worker killed outright (SIGKILL, the OOM killer) runs no teardown: its trial's
programs are orphaned as before. The CLI, which exits without closing its local cluster, ends
them itself (`end_descendants`).
"""

from __future__ import annotations

import os
from typing import Any

import psutil
from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

REAPER = "studyflow-child-reaper"
# Between asking the programs to end (SIGTERM) and killing them: within the 0.4 s a hung
# trial's nanny gives its worker to close (the server's HUNG_KILL_S x 0.8) before it kills it,
# with the reaper in it: one that ignores SIGTERM is still killed.
GRACE_S = 0.25


class ChildReaper(WorkerPlugin):
    """Ends the worker's child processes, and theirs, when the worker closes."""

    name = REAPER

    def teardown(self, worker: Any) -> None:
        end_descendants([os.getpid()])


def closing(worker: Any) -> bool:
    """Whether `worker` is closing: a loop begins no trial there (the reaper may just have ended
    the program a hung trial waited for, which frees the loop while the worker goes)."""
    return worker.status in (Status.closing, Status.closing_gracefully, Status.closed, Status.failed)


def watch_children(worker: Any) -> None:
    """Add the reaper to `worker`, once (its plugins are by name). Only to a worker under a
    nanny, whose process is its own: a worker of `LocalCluster(processes=False)` lives in the
    user's process, whose other children are not the trials'."""
    if worker.nanny and REAPER not in worker.plugins:
        worker.plugins[REAPER] = ChildReaper()


def end_descendants(pids: list[int], grace_s: float = GRACE_S) -> None:
    """SIGTERM to every process below each of `pids`, then SIGKILL to those still there after
    `grace_s` (the process table read once for all of them)."""
    below: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        below.setdefault(proc.info["ppid"], []).append(proc.pid)
    found, todo = [], list(pids)
    while todo:
        for child in below.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    children = []
    for pid in found:
        try:
            child = psutil.Process(pid)
            child.terminate()
            children.append(child)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
