"""What reproducible scheduling costs, and what parallelism costs TPE.

1. Throughput: trials with exponential durations (mean --mean-ms), 4 workers, `async` against
   `reproducible` (window c = 4 and 8); worker utilization = busy time / (workers x wall).
2. Sample efficiency: Branin, 100 trials, mean best value over --seeds seeds, for sequential
   TPE (concurrency 1), async and reproducible TPE with concurrency 8, and random search.

    python benchmarks/scheduling.py [--trials 200] [--seeds 10]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import numpy as np

from studyflow import optimize
from studyflow.cluster import connect

BRANIN_MIN = 0.397887


def sleeper(trial):
    rng = np.random.default_rng(trial.seed)  # the same trial sleeps the same time in every mode
    time.sleep(rng.exponential(trial.settings["mean_s"]))
    return trial.params["x"]


def branin(trial):
    x, y = trial.params["x"], trial.params["y"]
    a, b, c, r, s, t = 1, 5.1 / (4 * math.pi**2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return a * (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s


def throughput(client, n_trials: int, mean_s: float, scheduling: str, window: int) -> tuple[float, float]:
    study = {"objective": "bench:sleeper", "objective_args": {"mean_s": mean_s},
             "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": n_trials},
             "scheduling": scheduling, "concurrency": window}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = optimize(sleeper, study, client=client, results_dir=tmp, progress=False)
        wall = time.perf_counter() - start
    busy = result.trials["duration_s"].sum()
    return n_trials / wall, busy / (len(client.nthreads()) * wall)


def best_value(client, seed: int, sampler: str, scheduling: str, concurrency: int) -> float:
    study = {"objective": "bench:branin", "sampler": {"name": sampler, "seed": seed},
             "search_space": {"x": {"type": "float", "low": -5, "high": 10},
                              "y": {"type": "float", "low": 0, "high": 15}},
             "budget": {"n_trials": 100}, "scheduling": scheduling, "concurrency": concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        result = optimize(branin, study, client=client, results_dir=tmp, progress=False)
    return float(result.trials["value"].min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--mean-ms", type=float, default=100)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    with connect(4) as client:
        print(f"\n## Throughput: {args.trials} trials, exponential durations (mean {args.mean_ms:g} ms), 4 workers\n")
        print("| scheduling | trials/s | worker utilization | throughput vs async |")
        print("| --- | ---: | ---: | ---: |")
        base = None
        for scheduling, window in (("async", 4), ("reproducible", 4), ("reproducible", 8)):
            rate, util = throughput(client, args.trials, args.mean_ms / 1000, scheduling, window)
            base = base or rate
            label = scheduling if scheduling == "async" else f"reproducible (c = {window})"
            print(f"| {label} | {rate:.1f} | {util:.0%} | {rate / base:.2f} |")

        print(f"\n## Sample efficiency: Branin (min {BRANIN_MIN}), 100 trials, {args.seeds} seeds, 4 workers\n")
        print("| runner | mean best | mean gap to optimum | share of sequential TPE's gain over random |")
        print("| --- | ---: | ---: | ---: |")
        runs = {
            "random search": ("random", "async", 4),
            "sequential TPE (concurrency 1)": ("tpe", "async", 1),
            "TPE async, concurrency 8": ("tpe", "async", 8),
            "TPE reproducible, c = 8": ("tpe", "reproducible", 8),
        }
        means = {name: statistics.mean(best_value(client, s, *spec) for s in range(args.seeds))
                 for name, spec in runs.items()}
        gain = means["random search"] - means["sequential TPE (concurrency 1)"]
        for name, mean in means.items():
            share = (means["random search"] - mean) / gain if gain else float("nan")
            print(f"| {name} | {mean:.4f} | {mean - BRANIN_MIN:.4f} | {share:.0%} |")


if __name__ == "__main__":
    main()
