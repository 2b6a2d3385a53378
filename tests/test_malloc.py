"""The study server keeps the sampler's freed memory instead of faulting it in again each ask."""

from __future__ import annotations

import subprocess
import sys

import pytest

# TPE after 5,000 trials, asked on a thread other than the main one (as the server's event loop
# is): without `keep_freed_memory` glibc gave its ~1 MB arrays back to the OS after every ask
# and each ask faulted ~500 pages in again (1.2 ms of system time per ask here).
SCRIPT = """
import resource, sys, threading, optuna
from studyflow.optuna_ext import CachedFitTPESampler
from studyflow.server import keep_freed_memory
optuna.logging.set_verbosity(optuna.logging.ERROR)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
study = optuna.create_study(sampler=CachedFitTPESampler(seed=0))
study.add_trials([optuna.trial.create_trial(params={"x": (i * 0.618) % 1.0}, distributions=dist,
                                            value=((i * 0.618) % 1.0) ** 2) for i in range(5000)])
faults = []
def asks():
    for i in range(45):
        if i == 5:  # after the first asks have grown the thread's heap
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt)
        trial = study.ask(dist)
        study.tell(trial, trial.params["x"] ** 2)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt)
thread = threading.Thread(target=asks)
thread.start()
thread.join()
print((faults[1] - faults[0]) / 40)
"""


def _faults_per_ask(mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tpe_asks_on_the_server_thread_stop_faulting_memory_in_once_freed_memory_is_kept():
    default, kept = _faults_per_ask("default"), _faults_per_ask("keep")
    assert kept < 20, f"{kept} page faults per ask with freed memory kept ({default} without)"
    assert kept < default / 5, (kept, default)
