"""One Dask worker per GPU on this machine, each seeing only its own GPU.

`cluster: {mode: local, gpus: [0, 1]}` (or `gpus: auto`) starts one single-threaded worker
process per id with `CUDA_VISIBLE_DEVICES` set to that id and the Dask resource `GPU=1`, as
dask-cuda's `LocalCUDACluster` does: a trial's framework sees one device, and a study with
`worker_resources: {GPU: 1}` runs one trial per GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Any

from distributed import Nanny
from distributed import Scheduler
from distributed import SpecCluster

from studyflow._processes import worker_memory_limit
from studyflow.errors import StudyflowError
from studyflow.worker._gpu_pin import visible_gpus

_logger = logging.getLogger(__name__)


def gpu_ids(gpus: Any) -> list[str]:
    """The ids a `cluster.gpus` setting names; "auto": `CUDA_VISIBLE_DEVICES`, else (not inside
    a SLURM job, whose GPUs that names) every GPU `nvidia-smi -L` lists. Fails in one line when
    "auto" finds none, or a named id is one this process may not use (not in its
    `CUDA_VISIBLE_DEVICES`, or an index `nvidia-smi` does not list): that worker would see no GPU."""
    setting = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = visible_gpus(setting)
    if gpus != "auto":
        ids = [str(g) for g in gpus]
        _check_usable(ids, visible, setting)
        return ids
    if visible:
        return visible
    if setting is not None:
        raise StudyflowError(f"cluster.gpus: auto found no GPU: CUDA_VISIBLE_DEVICES={setting} hides every "
                             "GPU from this process; unset it, or name the ids, e.g. gpus: [0, 1]")
    if os.environ.get("SLURM_JOB_ID"):  # nvidia-smi would list the node's GPUs, other jobs' too
        raise StudyflowError(f"cluster.gpus: auto found no GPU given to SLURM job {os.environ['SLURM_JOB_ID']} "
                             "(CUDA_VISIBLE_DEVICES is unset); ask SLURM for them (the optimize rule's gpu "
                             "resource in the profile's set-resources)")
    ids = _listed_gpus()
    if ids:
        return ids
    raise StudyflowError("cluster.gpus: auto found no GPU (CUDA_VISIBLE_DEVICES is unset and nvidia-smi "
                         "lists none); name the ids, e.g. gpus: [0, 1]")


def _listed_gpus() -> list[str] | None:
    """The GPU indices `nvidia-smi -L` lists; None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def _check_usable(ids: list[str], visible: list[str], setting: str | None) -> None:
    """Refuse an id outside this process's CUDA_VISIBLE_DEVICES (`setting`: another user's GPU,
    or none where it hides them all), or an index nvidia-smi does not list (a typo). Ids are
    trusted, with a warning, where neither is known, and UUIDs (`GPU-...`, `MIG-...`) are left to CUDA."""
    for gpu in ids:
        if setting is not None and gpu not in visible:
            raise StudyflowError(f"cluster.gpus: GPU {gpu} is not among this process's "
                                 f"CUDA_VISIBLE_DEVICES={setting}")
    listed = None if setting is not None else _listed_gpus()
    if listed is None:
        if setting is None:
            _logger.warning("cluster.gpus %s: neither CUDA_VISIBLE_DEVICES nor nvidia-smi says which GPUs this "
                            "machine has; the ids are used as given (without such GPUs, trials run on the CPU)",
                            ", ".join(ids))
        return
    for gpu in ids:
        if gpu.isdigit() and gpu not in listed:
            raise StudyflowError(f"cluster.gpus: GPU {gpu} is not one nvidia-smi lists ({', '.join(listed) or 'none'})")


def gpu_cluster(ids: list[str], env: dict[str, str], security: Any = None, **scheduler_options: Any) -> SpecCluster:
    """A cluster on 127.0.0.1 with one worker per GPU id (over TLS with `security`)."""
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    workers = {
        f"gpu-{gpu}": {"cls": Nanny, "options": {
            "nthreads": 1, "host": "127.0.0.1", "resources": {"GPU": 1}, "memory_limit": worker_memory_limit(),
            "silence_logs": logging.CRITICAL,  # as LocalCluster's workers: no INFO lines of Dask's own
            "env": {**env, "CUDA_VISIBLE_DEVICES": gpu}, **tls}}
        for gpu in ids
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, **scheduler_options, **tls}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.CRITICAL, security=security)
