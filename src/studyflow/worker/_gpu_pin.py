"""One GPU per worker process of a SLURM worker job, as the local one-worker-per-GPU cluster has.

A job of `cores` worker processes whose study asks for `worker_resources: {GPU: g}` is given
`--gres=gpu:<cores x g>`, and SLURM sets the job's `CUDA_VISIBLE_DEVICES` to all of them: every
process would see every GPU, and a framework takes the first, so all of the job's trials would
run on one GPU. The job's workers preload this module (`--preload studyflow.worker._gpu_pin`),
which keeps, before any trial runs, the job's GPUs at the worker's index in the job (dask-worker
names the `--nworkers` processes of a job `<name>-<i>`): `g` of them each, or one shared by
`1/g` workers. Invariant: no two workers of a job see the same GPU unless `g` < 1.
"""

from __future__ import annotations

import math
import os
from typing import Any

GPUS_PER_WORKER = "STUDYFLOW_GPUS_PER_WORKER"  # exported by the job script: the study's GPU resource
WORKERS_PER_JOB = "STUDYFLOW_WORKERS_PER_JOB"  # and its worker processes (`cores`)


def visible_gpus(value: str | None) -> list[str]:
    """The GPUs a `CUDA_VISIBLE_DEVICES` value leaves CUDA, read as CUDA reads it: up to the
    first entry that is neither an index nor a `GPU-`/`MIG-` UUID ("-1" and "" hide them all)."""
    gpus = []
    for gpu in (value or "").split(","):
        gpu = gpu.strip()
        if not (gpu.isdigit() or gpu.startswith(("GPU-", "MIG-"))):
            break
        gpus.append(gpu)
    return gpus


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, in the worker process before it runs anything."""
    pinned = pinned_gpus(str(worker.name), os.environ)
    if pinned is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = pinned


def pinned_gpus(name: str, env: Any) -> str | None:
    """The `CUDA_VISIBLE_DEVICES` of the worker named `name` in a job whose environment is
    `env`; None when the job has no GPUs (or the worker needs none)."""
    visible = visible_gpus(env.get("CUDA_VISIBLE_DEVICES"))
    per_worker = float(env.get(GPUS_PER_WORKER) or 0)
    if not visible or per_worker <= 0:
        return None
    index = 0
    if int(env.get(WORKERS_PER_JOB) or 1) > 1:  # else dask-worker adds no `-<i>` to the job's name
        prefix, _, suffix = name.rpartition("-")
        index = int(suffix) if prefix and suffix.isdigit() else 0
    first = math.floor(index * per_worker)
    count = max(1, math.ceil(per_worker))
    mine = visible[first:first + count]
    return ",".join(mine) if mine else None
