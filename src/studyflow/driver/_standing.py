"""A cluster that outlives one study: `studyflow cluster up|status|down <scheduler-file>`.

`up` starts the cluster a study file's `cluster:` section describes (local worker processes,
one per GPU, or SLURM jobs kept at their size), with the study file's `worker_resources` on
every worker, in a process of its own, and returns once its workers have joined. Studies attach
with `cluster: {mode: scheduler_file, scheduler_file: <file>}` and share its slots (the study
server splits them fairly). The scheduler speaks TLS with certificates made for this cluster;
the client's credentials lie beside the scheduler file (`<file>.tls`, mode 0600), so only a
process that can read them gets in. `down` shuts it down and removes both files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distributed import Client
from distributed import Event

from studyflow.config import ClusterConfig
from studyflow.driver._cluster import connect
from studyflow.driver._supervisor import supervisor_for
from studyflow.driver._security import attach_security
from studyflow.driver._security import credentials_path
from studyflow.driver._security import run_security
from studyflow.errors import StudyflowError

_logger = logging.getLogger(__name__)

# What an attaching client needs; the scheduler's and workers' own keys stay with the cluster.
DOWN_EVENT = "studyflow-cluster-down"  # a Dask Event `down` sets and the cluster's process waits on
_CLIENT_FIELDS = ("require_encryption", "tls_ca_file", "tls_client_key", "tls_client_cert", "tls_min_version")


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user only, replacing whatever was there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def cluster_of(study_file: str | None) -> tuple[ClusterConfig, dict[str, float], list[str]]:
    """The cluster a study file describes, the resources its workers carry and where its
    objective is found; without a file, a local cluster of plain workers."""
    if study_file is None:
        return ClusterConfig(), {}, []
    from studyflow.config import load_study
    from studyflow.worker import search_paths

    cfg = load_study(study_file, [])
    return cfg.cluster, dict(cfg.worker_resources), search_paths(study_file)


def serve(scheduler_file: str | Path, cfg: ClusterConfig, n_workers: int | None,
          resources: dict[str, float] | None = None, search_paths: list[str] | None = None) -> None:
    """Run the cluster in this process until someone shuts its scheduler down (`down`, or
    `Client.shutdown()`), or this process is interrupted; then remove the scheduler file."""
    path = Path(scheduler_file)
    if cfg.mode not in ("local", "slurm"):
        raise StudyflowError(f"cluster.mode: {cfg.mode!r} attaches to a cluster; `cluster up` starts "
                             "one from mode: local or mode: slurm")
    security = run_security(cfg)
    try:
        with connect(n_workers, cluster=cfg, search_paths=search_paths, resources=resources,
                     carry_resources=True, security=security,
                     tls_dir=path.parent / f".{path.name}.certs") as client:
            if security is not None:
                fields = {name: getattr(security, name) for name in _CLIENT_FIELDS}
                _write_private(credentials_path(path), json.dumps(fields))
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            client.write_scheduler_file(str(tmp))
            os.replace(tmp, path)
            _logger.info("cluster up at %s: %d workers; scheduler file %s", client.scheduler.address,
                         len(client.scheduler_info()["workers"]), path)
            supervisor = supervisor_for(client)
            scheduler = getattr(client.cluster, "scheduler", None)
            asked_down = Event(DOWN_EVENT, client=client)
            while getattr(scheduler, "status", None) not in _CLOSED and not asked_down.wait(0.5):
                supervisor.check()
            _logger.info("asked to go down; stopping the workers")
    finally:
        path.unlink(missing_ok=True)
        credentials_path(path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the SLURM key folders' parent, empty once they are gone
            (path.parent / f".{path.name}.certs").rmdir()


def _closed_states() -> tuple[Any, ...]:
    from distributed.core import Status

    return (Status.closing, Status.closed, Status.failed)


_CLOSED = _closed_states()


def up(scheduler_file: str | Path, argv: list[str], timeout_s: float = 600) -> str:
    """Start `studyflow cluster up ... --foreground` in a session of its own (it outlives this
    process and the shell), logging to `<file>.log`; return its address once it is ready."""
    path = Path(scheduler_file)
    if path.exists():
        raise StudyflowError(f"{path} exists: a cluster is up there (`studyflow cluster down {path}`), "
                             "or a dead one left it; remove it to start anew")
    path.parent.mkdir(parents=True, exist_ok=True)
    log = Path(f"{path}.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "studyflow.cli", "cluster", "up", *argv, "--foreground"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise StudyflowError(f"the cluster did not start ({log}): {tail[0]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise StudyflowError(f"the cluster was not up within {timeout_s:g} s; see {log}")
        time.sleep(0.2)
    return json.loads(path.read_text())["address"]


def status(scheduler_file: str | Path) -> dict[str, Any]:
    """The cluster's address, workers (with their resources) and open studies."""
    with _attach(scheduler_file) as client:
        info = client.scheduler_info(n_workers=-1)
        workers = {w.get("name", a): w.get("resources", {}) for a, w in info["workers"].items()}
        studies = client.run_on_scheduler(_open_studies)
        return {"address": info["address"], "workers": workers, "studies": studies}


def _open_studies(dask_scheduler: Any) -> list[str]:
    """The names of the studies the cluster's study server holds open (`StudyServer._studies`)."""
    plugin = dask_scheduler.plugins.get("studyflow")
    return sorted(served.config.name for served in getattr(plugin, "_studies", {}).values())


def down(scheduler_file: str | Path, timeout_s: float = 60) -> None:
    """Ask the cluster's process to close its cluster, and wait until it has removed the
    scheduler file; shut the scheduler down from here if it does not within `timeout_s`."""
    path = Path(scheduler_file)
    with _attach(path) as client:
        Event(DOWN_EVENT, client=client).set()
    deadline = time.monotonic() + timeout_s
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if path.exists():
        with _attach(path) as client:
            client.shutdown()
        _logger.warning("the cluster's process did not remove %s within %g s; removing it", path, timeout_s)
        path.unlink(missing_ok=True)
        credentials_path(path).unlink(missing_ok=True)


def _attach(scheduler_file: str | Path) -> Client:
    if not Path(scheduler_file).is_file():
        raise StudyflowError(f"{scheduler_file}: no such scheduler file (no cluster is up there)")
    try:
        return Client(scheduler_file=str(scheduler_file), security=attach_security(scheduler_file), timeout=10)
    except OSError as exc:
        raise StudyflowError(f"{scheduler_file}: the cluster it names does not answer ({exc})") from None
