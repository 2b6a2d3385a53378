"""A worker process's BLAS/OpenMP and PyTorch threads: `cluster.trial_threads` of them.

Local workers fork from a forkserver that imported NumPy (and the objective's module, PyTorch
say) with one thread, which is when OpenBLAS and PyTorch size their pools; the environment a
nanny gives its worker comes too late for them. So a worker whose environment asks for more
(`TRIAL_THREADS_ENV`, set with the thread variables by the driver or the SLURM job script)
sets the libraries already loaded to that many, with threadpoolctl (scikit-learn's own
dependency) and `torch.set_num_threads`; libraries loaded later read the variables. One
thread, the default, touches nothing.
"""

from __future__ import annotations

import os
import sys

from studyflow._processes import TRIAL_THREADS_ENV

_applied: list[int] = []  # the count already set in this process


def use_trial_threads() -> int:
    """Set this process's loaded thread pools to the trial threads its environment asks for;
    once per process. Returns the count."""
    threads = int(os.environ.get(TRIAL_THREADS_ENV, "1") or 1)
    if threads == 1 or threads in _applied:
        return threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # kept for the process: the limits are not undone
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    _applied.append(threads)
    return threads
