"""How fast studyflow recovers: a killed worker's trial, and a resumed study.

1. Killed worker: the objective SIGKILLs its worker on one trial; we time the kill -> the server
   marking that trial FAIL (WorkerLost) -> its retry starting on a live worker.
2. Resume: a study with --history finished trials (TPE) is run again with one more trial; we
   time optimize() -> first new trial starting, beside plain `optuna.load_study` of the same
   journal in the same process (the floor for any journal-based resume).

    python benchmarks/recovery.py [--history 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from studyflow import optimize
from studyflow.driver import connect

SPACE = {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}}


def kill_on_trial_5(trial):
    marker = Path(os.environ["SF_BENCH_MARKER"])
    if trial.number == 5 and not marker.exists():
        marker.write_text(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return trial.params["x"]


def instant(trial):
    return trial.params["x"] + trial.params["y"]


def killed_worker(tmp: Path) -> tuple[float, float]:
    marker = tmp / "killed"
    os.environ["SF_BENCH_MARKER"] = str(marker)
    study = {"objective": "bench:kill", "search_space": SPACE, "budget": {"n_trials": 12}}
    with connect(2) as client:
        result = optimize(kill_on_trial_5, study, client=client, results_dir=tmp, progress=False)
    killed_at = float(marker.read_text())
    trials = result.trials.set_index("number")
    noticed = trials.loc[5, "datetime_complete"].timestamp() - killed_at
    retry = trials[trials["retry_of"] == 5].iloc[0]
    return noticed, retry["datetime_start"].timestamp() - killed_at


def resume(tmp: Path, history: int) -> tuple[float, float]:
    study = {"objective": "bench:instant", "search_space": SPACE, "sampler": {"name": "tpe", "seed": 0},
             "budget": {"n_trials": history}, "name": "resume"}
    with connect(2) as client:
        first = optimize(instant, study, client=client, results_dir=tmp, progress=False)
        start = time.time()
        again = optimize(instant, study, client=client, results_dir=tmp, progress=False,
                         overrides=[f"budget.n_trials={history + 1}"])
    new = again.trials[again.trials["number"] == history].iloc[0]
    to_first_trial = new["datetime_start"].timestamp() - start
    t0 = time.perf_counter()
    optuna.load_study(study_name="resume", storage=JournalStorage(JournalFileBackend(str(first.journal))))
    return to_first_trial, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    kills, resumes = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            kills.append(killed_worker(Path(tmp)))
        with tempfile.TemporaryDirectory() as tmp:
            resumes.append(resume(Path(tmp), args.history))
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"\nmedian of {args.repeats} repeats, 2 workers\n")
    print("| what | seconds |")
    print("| --- | ---: |")
    print(f"| worker SIGKILLed -> its trial marked FAIL (WorkerLost) | {med([k[0] for k in kills]):.3f} |")
    print(f"| worker SIGKILLed -> the retry starts on a live worker | {med([k[1] for k in kills]):.3f} |")
    print(f"| resume of {args.history} finished trials: optimize() -> first new trial starts | {med([r[0] for r in resumes]):.3f} |")
    print(f"| baseline: optuna.load_study of the same journal | {med([r[1] for r in resumes]):.3f} |")


if __name__ == "__main__":
    main()
