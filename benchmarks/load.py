"""Load: many trial loops against one study server, instant trials.

64 trial loops (threads across 4 worker processes) run 10,000 instant trials of random
search; the script checks exactly 10,000 COMPLETE, no number lost or duplicated and none left
RUNNING, and prints trials/s and the CPU the process holding the scheduler and the study
server spent per trial, beside the same study with 8 loops.

    python benchmarks/load.py [--trials 10000] [--loops 8,64] [--workers 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import psutil
from distributed import Client
from distributed import LocalCluster

from studyflow import optimize


def instant(trial):
    return trial.suggest_float("x", 0, 1)


def run(n_trials: int, loops: int, workers: int) -> tuple[float, float]:
    """Wall seconds and scheduler-process CPU seconds of one study, after checking its trials."""
    threads = -(-loops // workers)
    with LocalCluster(n_workers=workers, threads_per_worker=threads, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client, \
            tempfile.TemporaryDirectory() as tmp:
        study = {"search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "name": "load",
                 "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": n_trials}, "concurrency": loops}
        me = psutil.Process()
        cpu, wall = sum(me.cpu_times()[:2]), time.perf_counter()
        result = optimize(instant, study, client=client, results_dir=tmp, progress=False)
        wall, cpu = time.perf_counter() - wall, sum(me.cpu_times()[:2]) - cpu
        trials = result.trials
        assert trials["number"].tolist() == list(range(n_trials)), "a trial number was lost or duplicated"
        assert (trials["state"] == "COMPLETE").all()
        assert "RUNNING" not in {t.state.name for t in result.study.get_trials(deepcopy=False)}
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--loops", default="8,64")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    print(f"\n## Load: {args.trials} instant trials, random search, {args.workers} worker processes\n")
    print("| trial loops | wall s | trials/s | server process CPU ms/trial | exactly the budget, none RUNNING |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for loops in map(int, args.loops.split(",")):
        wall, cpu = run(args.trials, loops, args.workers)
        print(f"| {loops} | {wall:.2f} | {args.trials / wall:.0f} | {1000 * cpu / args.trials:.3f} | yes |")


if __name__ == "__main__":
    main()
