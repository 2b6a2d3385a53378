"""Start or attach the Dask cluster a study runs on: local, SLURM jobs, or an existing one."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
from distributed import Client
from distributed import LocalCluster

from studyflow._compat import build_tls_defaults_soon
from studyflow._compat import hear_worker_starts_soon
from studyflow._compat import keep_own_forkserver_preload
from studyflow._processes import thread_env
from studyflow._processes import ForkserverDiedError
from studyflow._processes import forkserver_died
from studyflow._processes import forked_workers_config
from studyflow._processes import preloaded_objective_modules
from studyflow._processes import worker_env
from studyflow._processes import worker_memory_limit
from studyflow.config import ClusterConfig
from studyflow.config._validate import check_job_fields
from studyflow.driver._gpus import gpu_cluster
from studyflow.driver._gpus import gpu_ids
from studyflow.driver._security import attach_security
from studyflow.driver._security import key_folder
from studyflow.driver._security import remove_key_folder
from studyflow.driver._security import restrict_key_files
from studyflow.driver._security import run_security
from studyflow.driver._slurm_jobs import check_submittable
from studyflow.driver._supervisor import SlurmSupervisor
from studyflow.errors import ConfigError
from studyflow.errors import StudyflowError
from studyflow.worker._gpu_pin import GPUS_PER_WORKER
from studyflow.worker._gpu_pin import WORKERS_PER_JOB

_logger = logging.getLogger(__name__)

# Dask workers sample every thread's stack each 10 ms for the dashboard's profile page, which
# studyflow's local clusters do not serve: CPU taken from the trials for nothing. Off unless the
# environment turns it on.
PROFILE_ENV_VAR = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"

# Worker jobs' output (SLURM's `slurm-<id>.out`) goes here, relative to the submitting job's
# folder, next to the workflow's own logs, instead of littering that folder.
SLURM_LOG_DIRECTORY = "logs/slurm-workers"


# A worker process as a script's main process is: not daemonic, so an objective may start
# processes of its own (a PyTorch DataLoader's workers, a process pool); Python forbids a
# daemonic process children. Worker processes still end with their nanny (it stops them).
NOT_DAEMONIC = {"distributed.worker.daemon": False}
NOT_DAEMONIC_ENV = "DASK_DISTRIBUTED__WORKER__DAEMON"  # the same, for a SLURM job's dask-worker


def local_worker_config() -> dict[str, Any]:
    """Dask settings for local workers: no stack profiling, not daemonic, forked from a warm
    forkserver (whose preload is studyflow's own), heard by their nannies as soon as they start."""
    keep_own_forkserver_preload()
    hear_worker_starts_soon()
    parsed = dask.config.collect_env({PROFILE_ENV_VAR: os.environ.get(PROFILE_ENV_VAR, "False")})
    return {"distributed.worker.profile.enabled": parsed["distributed"]["worker"]["profile"]["enabled"],
            **NOT_DAEMONIC, **forked_workers_config()}


def local_workers(requested: int | None, trial_threads: int = 1) -> int:
    """Workers for a local cluster: as asked, else one per `trial_threads` of the SLURM job's
    CPUs, else of the cores."""
    if requested:
        return requested
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    return max(1, (int(slurm_cpus) if slurm_cpus else (os.cpu_count() or 1)) // trial_threads)


def slurm_cluster_kwargs(cfg: ClusterConfig, search_paths: list[str] | None = None,
                         resources: dict[str, float] | None = None) -> dict[str, Any]:
    """dask-jobqueue arguments: each job runs `cores` worker processes of one trial (and
    `trial_threads` BLAS/OpenMP threads, the job's CPUs: cores x trial_threads) each, each
    free to use the job's `memory` (not memory / cores; see `worker_memory_limit`),
    carrying the study's `worker_resources` as Dask resources; GPUs among them are also asked
    of SLURM (`--gres=gpu:<cores x GPU>` per job), each process keeping its own of them
    (`worker._gpu_pin`). Fields that reach the job script's shell are checked against strict
    patterns (one line naming the key) or quoted."""

    def fail(key: str, msg: str) -> None:
        raise StudyflowError(f"{key}: {msg}")

    check_job_fields(cfg, fail)
    prologue = [f"export {k}={v}" for k, v in thread_env(cfg.trial_threads).items()] + [f"export {NOT_DAEMONIC_ENV}=False"]
    directives = list(cfg.job_extra_directives)
    worker_args = ["--memory-limit", cfg.memory]
    if resources:
        worker_args += ["--resources", ",".join(f"{name}={amount:g}" for name, amount in resources.items())]
        gpus = sum(amount for name, amount in resources.items() if name.upper() == "GPU")
        if gpus:
            directives.append(f"--gres=gpu:{int(gpus * cfg.cores + 0.999)}")
            # each worker process keeps its own of the job's GPUs (worker/_gpu_pin.py)
            prologue += [f"export {GPUS_PER_WORKER}={gpus:g}", f"export {WORKERS_PER_JOB}={cfg.cores}"]
            worker_args += ["--preload", "studyflow.worker._gpu_pin"]
    if search_paths:
        prologue.append(f"export PYTHONPATH={shlex.quote(os.pathsep.join(search_paths))}${{PYTHONPATH:+:$PYTHONPATH}}")
    return dict(
        cores=cfg.cores,
        processes=cfg.cores,
        job_cpu=cfg.cores * cfg.trial_threads,  # each worker process's trial runs trial_threads
        memory=cfg.memory,
        walltime=cfg.walltime,
        queue=cfg.queue,
        account=cfg.account,
        job_extra_directives=directives,
        worker_extra_args=worker_args,
        job_script_prologue=prologue,
        python=sys.executable,
        log_directory=SLURM_LOG_DIRECTORY,
    )


def slurm_job_script(cfg: ClusterConfig, search_paths: list[str] | None = None,
                     resources: dict[str, float] | None = None) -> str:
    """The script dask-jobqueue would submit, without starting anything."""
    from dask_jobqueue.slurm import SLURMJob

    job = SLURMJob(scheduler="tls://<scheduler>:<port>" if cfg.tls else "tcp://<scheduler>:<port>",
                   name="studyflow-worker", **slurm_cluster_kwargs(cfg, search_paths, resources))
    return job.job_script()


def jobs_used(cfg: ClusterConfig, loops: int | None) -> ClusterConfig:
    """`cfg` with no more SLURM jobs than hold `loops` trial loops (the study's concurrency, or
    its reproducible window): loops never exceed it, so a job beyond them was booked and sat
    idle for the whole study (`concurrency: 1` with `jobs: 2`). Adaptive clusters follow the
    loops already; other modes are as they are."""
    if cfg.mode != "slurm" or cfg.adapt is not None or not loops or loops >= cfg.jobs * cfg.cores:
        return cfg
    jobs = -(-loops // cfg.cores)
    _logger.info("%d trial(s) at once fit %d of the %d worker job(s) of %d worker(s) asked for: submitting %d",
                 loops, jobs, cfg.jobs, cfg.cores, jobs)
    return replace(cfg, jobs=jobs)


def describe(cfg: ClusterConfig, n_workers: int | None, search_paths: list[str] | None = None,
             resources: dict[str, float] | None = None) -> str:
    """What `studyflow run --dry-run` prints about the cluster."""
    if cfg.mode == "address":
        return f"cluster: attach to the scheduler at {cfg.address}"
    if cfg.mode == "scheduler_file":
        return f"cluster: attach to the scheduler in {cfg.scheduler_file}"
    if cfg.mode == "local":
        threads = "single-threaded" if cfg.trial_threads == 1 else f"{cfg.trial_threads}-thread"
        return (f"cluster: LocalCluster, {local_workers(n_workers, cfg.trial_threads)} {threads} worker "
                "processes on 127.0.0.1")
    script = slurm_job_script(cfg, search_paths, resources)
    return (f"cluster: SLURM, {cfg.jobs} job(s) x {cfg.cores} worker process(es), "
            f"{'TLS with certificates made for the run' if cfg.tls else 'plain TCP'}\n"
            f"job script:\n{script}")


@contextmanager
def connect(
    n_workers: int | None = 1,
    address: str | None = None,
    scheduler_file: str | None = None,
    cluster: ClusterConfig | None = None,
    tls_dir: str | Path | None = None,
    search_paths: list[str] | None = None,
    resources: dict[str, float] | None = None,
    carry_resources: bool = False,
    security: Any = None,
    source: str = "the study",
) -> Iterator[Client]:
    """Yield a client to the cluster the study asks for (see `ClusterConfig`); SLURM worker
    jobs carry `resources` (the study's `worker_resources`), local workers only with
    `carry_resources` (a standing cluster: a study's own local cluster must not pretend to
    have a GPU); `source`: the study file its errors name. Clusters started here speak TLS with
    certificates made for the run unless `cluster.tls: false` (`security`: these instead);
    attaching uses the study file's TLS files or the standing cluster's credentials
    (`_security.py`), and a cluster it cannot reach fails in one line (`_attached`).

    The local cluster has one worker process of one trial per slot (BLAS/OpenMP capped at
    `cluster.trial_threads` threads, one by default), listens on 127.0.0.1 only, and picks a free dashboard port so parallel runs
    never clash on 8787.
    """
    cfg = cluster or ClusterConfig()
    address = address or (cfg.address if cfg.mode == "address" else None)
    scheduler_file = scheduler_file or (cfg.scheduler_file if cfg.mode == "scheduler_file" else None)
    if address or scheduler_file:
        with _attached(address, scheduler_file, cfg, source) as client:
            _logger.info("attached to scheduler %s", client.scheduler.address)
            yield client
        return
    if security is None:
        security = run_security(cfg)
    if cfg.mode == "slurm":
        with _slurm(cfg, tls_dir, search_paths, resources, security) as client:
            yield client
        return
    if security is not None:  # loads the CA bundle without the GIL while the scheduler starts
        build_tls_defaults_soon()
    if cfg.gpus is not None:
        ids = gpu_ids(cfg.gpus)
        with dask.config.set(local_worker_config()), \
                _forked(gpu_cluster, ids, worker_env(cfg.trial_threads), security, dashboard=False) as local, \
                Client(local, security=security) as client:
            _logger.info("local cluster: one worker per GPU %s at %s", ids, local.scheduler_address)
            yield client
        return
    n = local_workers(n_workers, cfg.trial_threads)
    with dask.config.set(local_worker_config()), _forked(
        LocalCluster,
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",  # None would still bind the http server to :8787
        scheduler_kwargs={"dashboard": False},  # no bokeh dashboard: it costs the server CPU
        silence_logs=logging.CRITICAL,  # shutdown races log scary heartbeat errors
        env=worker_env(cfg.trial_threads),
        memory_limit=worker_memory_limit(),
        resources=resources if carry_resources else None,
        **({"security": security, "protocol": "tls://"} if security is not None else {}),
    ) as local, Client(local, security=security) as client:
        _logger.info("local cluster: %d workers at %s", n, local.scheduler_address)
        yield client


def _attached(address: str | None, scheduler_file: str | None, cfg: ClusterConfig, source: str) -> Client:
    """A client of the cluster at `address` or in `scheduler_file`; a cluster it cannot reach
    fails in one line naming the key (Dask's errors came as a 60-line traceback: a TypeError
    about `ssl_context` for tls:// without the TLS files, a reset connection for tcp:// to a
    cluster that speaks TLS)."""
    security = attach_security(scheduler_file, cfg)
    key, target = ("cluster.address", address) if address else ("cluster.scheduler_file", scheduler_file)
    files = "cluster.tls_ca_file, tls_cert and tls_key"
    if address and address.startswith("tls://") and security is None:
        raise ConfigError(source, key, f"{address} speaks TLS: set {files} (a standing cluster writes them "
                                       "in <scheduler file>.tls), or attach by cluster.scheduler_file")
    try:
        return Client(address=address, scheduler_file=scheduler_file, security=security)
    except (OSError, TypeError, ValueError) as exc:
        hint = f" (a cluster that speaks TLS needs a tls:// address and {files})" if (
            address and address.startswith("tcp://")) else ""
        raise ConfigError(source, key, f"cannot attach to {target}: {type(exc).__name__}: {exc}{hint}") from None


def _forked(start: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`start(*args, **kwargs)`, a cluster whose workers fork from the local forkserver (one
    per slot, or per GPU); `ForkserverDiedError` when the forkserver died under a nanny asking
    it for a worker (what it imports first crashed it)."""
    try:
        return start(*args, **kwargs)
    except Exception as exc:
        if forkserver_died(exc):
            raise ForkserverDiedError(preloaded_objective_modules()) from None
        raise


@contextmanager
def connecting(n_workers: int | None = 1, address: str | None = None, cluster: ClusterConfig | None = None,
               exiting: bool = False, **kwargs: Any) -> Iterator[Callable[[], Client]]:
    """`connect`, begun now on another thread when it starts a local cluster, so the caller's
    own start-up work runs while the workers start; yields `started()`, which waits for the
    client (raising what the start raised). Attaching and SLURM connect at the first
    `started()`, on the caller's thread. Whatever started is closed on exit, also when the
    caller's work failed, by the thread that started it (a client is entered and left in one context).

    `exiting`: the caller ends its process right after (the CLI, with `os._exit`), so a local
    cluster is left to end with it, not closed (60-100 ms of the command): each worker process
    exits at once when its nanny's process does (distributed's parent-alive pipe), the forkserver
    too, and the next local cluster purges their scratch folders. SLURM jobs are always closed."""
    cfg = cluster or ClusterConfig()
    if cfg.mode != "local" or address is not None:
        with ExitStack() as stack:
            clients: list[Client] = []

            def connected() -> Client:
                if not clients:
                    clients.append(stack.enter_context(connect(n_workers, address, cluster=cfg, **kwargs)))
                return clients[0]

            yield connected
        return
    client: Future = Future()
    done = threading.Event()
    closing: list[BaseException] = []  # what closing the cluster raised

    def run() -> None:
        try:
            with connect(n_workers, address, cluster=cfg, **kwargs) as started:
                client.set_result(started)
                done.wait()
        except BaseException as exc:  # noqa: BLE001  raised on the caller's thread
            if client.done():
                closing.append(exc)
            else:
                client.set_exception(exc)

    thread = threading.Thread(target=run, name="studyflow-cluster-start", daemon=True)
    thread.start()
    try:
        yield client.result
    finally:
        if not exiting:
            done.set()
            thread.join()
        elif client.done() and client.exception() is None:
            _end_trial_programs(client.result())
    if closing:
        raise closing[0]


def _end_trial_programs(client: Client) -> None:
    """The programs trials started (a training script they shell out to), ended before the CLI
    exits without closing its local cluster: each worker then ends at once (`os._exit`, with no
    close for `worker._reaper` to end them at), and a trial still running at the end (a stopped
    study, a Ctrl-C) left its program running past the run."""
    from studyflow.worker._reaper import end_descendants  # not before: `studyflow.worker` loads Optuna

    nannies = getattr(client.cluster, "workers", {}).values()
    pids = [nanny.pid for nanny in nannies if getattr(nanny, "pid", None)]
    if pids:
        end_descendants(pids)


@contextmanager
def slurm_cluster(cfg: ClusterConfig, tls_dir: str | Path | None, search_paths: list[str] | None = None,
                  resources: dict[str, float] | None = None, security: Any = None) -> Iterator[Any]:
    """A SLURMCluster with no job yet. Its dashboard listens on 127.0.0.1 only; with
    `security` (TLS), the key files its workers read are 0600 in a 0700 folder under `tls_dir`
    (on a filesystem the nodes share), removed when it closes."""
    from dask_jobqueue import SLURMCluster

    kwargs = slurm_cluster_kwargs(cfg, search_paths, resources)
    keys = None
    if security is not None:
        keys = key_folder(tls_dir or Path.cwd() / ".studyflow-tls")
        kwargs.update(security=security, shared_temp_directory=str(keys), protocol="tls://")
    slurm = None
    try:
        with SLURMCluster(**kwargs, scheduler_options={"dashboard_address": "127.0.0.1:0"}) as slurm:
            if keys is not None:
                restrict_key_files(keys)
            check_submittable(slurm.job_script())
            yield slurm
    finally:
        if keys is not None:
            for name, handle in list(vars(slurm).items() if slurm is not None else []):
                if name.startswith("_job_") and hasattr(handle, "close"):  # jobqueue's key files
                    handle.close()
            remove_key_folder(keys)


@contextmanager
def _slurm(cfg: ClusterConfig, tls_dir: str | Path | None, search_paths: list[str] | None,
           resources: dict[str, float] | None = None, security: Any = None) -> Iterator[Client]:
    with slurm_cluster(cfg, tls_dir, search_paths, resources, security) as slurm:
        if cfg.adapt is not None:  # jobs follow the trial loops waiting to run (the driver's)
            slurm.adapt(minimum_jobs=cfg.adapt.get("minimum", 0), maximum_jobs=cfg.adapt["maximum"])
        else:
            slurm.scale(jobs=cfg.jobs)
        with Client(slurm, security=security) as client:
            _logger.info("SLURM cluster at %s: %s job(s) of %d worker(s)", slurm.scheduler_address,
                         cfg.adapt or cfg.jobs, cfg.cores)
            if cfg.adapt is None:
                SlurmSupervisor(slurm, cfg.jobs, every_s=2.0).wait_for_a_worker(client, 600)
            yield client
