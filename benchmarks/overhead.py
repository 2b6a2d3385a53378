"""Per-trial coordination overhead: studyflow's trial loops against one Dask task per trial.

Both run an instant objective with RandomSampler on the same 2-worker LocalCluster, in the
same process; the table gives trials/s, ms per trial and the ratio (median of --repeats).

    python benchmarks/overhead.py [--trials 2000] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import optuna
from distributed import Client
from distributed import as_completed

from studyflow import optimize
from studyflow.driver import connect


def instant(trial):
    return trial.suggest_float("x", 0, 1) ** 2


def _evaluate(x: float) -> float:
    return x * x


def run_studyflow(client: Client, n_trials: int) -> float:
    """Wall time of `optimize()` alone: deleting its results directory afterwards is the
    benchmark's cleanup, not part of a user's run."""
    study = {"objective": "bench:instant", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": n_trials}}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        optimize(instant, study, client=client, results_dir=tmp, progress=False)
        return time.perf_counter() - start


def run_task_per_trial(client: Client, n_trials: int, concurrency: int) -> float:
    """The usual glue: the driver asks, submits one task per trial, tells when it returns."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    running: dict[str, optuna.Trial] = {}
    finished = as_completed()
    start = time.perf_counter()

    def submit() -> None:
        trial = study.ask(space)
        future = client.submit(_evaluate, trial.params["x"], pure=False)
        running[future.key] = trial
        finished.add(future)

    for _ in range(min(concurrency, n_trials)):
        submit()
    asked = len(running)
    for future in finished:
        study.tell(running.pop(future.key), future.result())
        if asked < n_trials:
            submit()
            asked += 1
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with connect(args.workers) as client:
        rows = {"studyflow (trial loops)": [], "one Dask task per trial": []}
        for _ in range(args.repeats):
            rows["studyflow (trial loops)"].append(run_studyflow(client, args.trials))
            rows["one Dask task per trial"].append(run_task_per_trial(client, args.trials, args.workers))
    base = statistics.median(rows["one Dask task per trial"])
    print(f"\n{args.trials} instant trials, RandomSampler, {args.workers} workers, median of {args.repeats}\n")
    print("| runner | wall s | trials/s | ms/trial | speed-up vs task per trial |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in rows.items():
        wall = statistics.median(times)
        print(f"| {name} | {wall:.2f} | {args.trials / wall:.0f} | {1000 * wall / args.trials:.2f} | {base / wall:.1f}x |")


if __name__ == "__main__":
    main()
