"""Who keeps a study's cluster at its size while the study runs: for a SLURM cluster of a
fixed size, `SlurmSupervisor` replaces worker jobs that ended (dask-jobqueue would not) and
stops the study when jobs keep ending before their worker starts."""

from __future__ import annotations

import logging
import time
from typing import Any

from distributed import Client

from studyflow.driver._slurm_jobs import live_slurm_jobs
from studyflow.driver._slurm_jobs import slurm_says
from studyflow.errors import StudyflowError

_logger = logging.getLogger(__name__)


class Supervisor:
    """Keeps a cluster at its size while a study runs (only SLURM needs it: a job that SLURM
    killed or that hit its walltime stays in dask-jobqueue's plan and is never replaced)."""

    def check(self) -> None:
        """Called by the driver between status polls."""


class SlurmSupervisor(Supervisor):
    """Replaces worker jobs that ended; stops the study once `MAX_FAILED_STARTS` jobs in a row
    ended before any worker of theirs joined (a job that cannot start would be resubmitted
    forever), quoting what SLURM says of the last one."""

    EVERY_S = 10.0  # squeue at most this often: the driver polls 5 times a second
    MAX_FAILED_STARTS = 3

    def __init__(self, cluster: Any, jobs: int, every_s: float = EVERY_S) -> None:
        self.cluster = cluster
        self.jobs = jobs
        self.every_s = every_s
        self._last = 0.0
        self.joined: set[str] = set()  # job names a worker of which joined the scheduler
        self.failed_starts = 0  # jobs in a row that ended before any worker joined

    def check(self) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        self._note_joined()
        alive = live_slurm_jobs()
        if alive is None:
            return
        dead = {name: job.job_id for name, job in list(self.cluster.workers.items())
                if getattr(job, "job_id", None) and job.job_id not in alive}
        if not dead:
            return
        for name, job_id in dead.items():
            self.cluster.worker_spec.pop(name, None)
            self.cluster.workers.pop(name, None)
            self.failed_starts = 0 if name in self.joined else self.failed_starts + 1
            if self.failed_starts >= self.MAX_FAILED_STARTS:
                raise StudyflowError(f"{self.failed_starts} SLURM worker jobs in a row ended before their "
                                     f"worker started; the last, job {job_id}: {slurm_says(job_id)}")
        _logger.warning("SLURM worker job(s) %s ended; submitting replacements", list(dead))
        self.cluster.scale(jobs=self.jobs)

    def _note_joined(self) -> None:
        names = [str(w.get("name", "")) for w in self.cluster.scheduler_info.get("workers", {}).values()]
        for job in self.cluster.workers:
            if any(n == str(job) or n.startswith(f"{job}-") for n in names):
                self.joined.add(job)

    def wait_for_a_worker(self, client: Client, timeout_s: float) -> None:
        """Wait for the first worker, failing early when the jobs cannot start."""
        deadline = time.monotonic() + timeout_s
        while not client.scheduler_info()["workers"]:
            if time.monotonic() > deadline:
                raise StudyflowError(f"no SLURM worker job started within {timeout_s:g} s")
            self.check()
            time.sleep(0.5)


def supervisor_for(client: Client, adaptive: bool = False) -> Supervisor:
    """Who keeps the cluster at its size: nobody for an adaptive one (dask-jobqueue's adapt
    replaces jobs itself)."""
    cluster = getattr(client, "cluster", None)
    if type(cluster).__name__ == "SLURMCluster" and not adaptive:
        return SlurmSupervisor(cluster, len(cluster.worker_spec))
    return Supervisor()
