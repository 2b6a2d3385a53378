"""What reproducible scheduling costs, what parallelism costs TPE, and whether TPE keeps workers busy.

1. Throughput: trials with exponential durations (mean --mean-ms), 4 workers, `async` against
   `reproducible` (window c = 4 and 8); worker utilization = busy time / (workers x wall).
2. Sample efficiency (8 workers): Branin, Hartmann-6, a 5-D Rosenbrock and one real tuning
   task from the shipped examples (config/studies/trading_tpe.yaml: walk-forward Sharpe of a
   trading strategy on GOOG), 100 trials, mean best value over --seeds seeds, for sequential
   TPE (concurrency 1, no prefetch), async TPE with concurrency 8 (default prefetch, and
   prefetch 0), reproducible TPE with c = 8, and random search; mean rank per seed (1 = best).
3. Busy share: 8 workers, 50 ms trials, TPE (and random search, whose sampler costs nothing),
   --busy-trials trials, median of --repeats runs: objective time / (8 x wall).

    python benchmarks/scheduling.py [--trials 200] [--seeds 10] [--sections throughput,efficiency,busy]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from studyflow import optimize
from studyflow.driver import connect

BRANIN_MIN = 0.397887


def sleeper(trial):
    rng = np.random.default_rng(trial.seed)  # the same trial sleeps the same time in every mode
    time.sleep(rng.exponential(trial.settings["mean_s"]))
    return trial.params["x"]


def branin(trial):
    x, y = trial.params["x"], trial.params["y"]
    a, b, c, r, s, t = 1, 5.1 / (4 * math.pi**2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return a * (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s


HARTMANN_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                       [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
HARTMANN_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                              [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(trial):
    x = np.array([trial.params[f"x{i}"] for i in range(6)])
    return float(-(HARTMANN_ALPHA * np.exp(-(HARTMANN_A * (x - HARTMANN_P) ** 2).sum(axis=1))).sum())


def rosenbrock5(trial):
    x = np.array([trial.params[f"x{i}"] for i in range(5)])
    return float((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum())


FUNCTIONS = {
    "branin": (branin, {"x": {"type": "float", "low": -5, "high": 10}, "y": {"type": "float", "low": 0, "high": 15}},
               BRANIN_MIN),
    "hartmann6": (hartmann6, {f"x{i}": {"type": "float", "low": 0, "high": 1} for i in range(6)}, -3.32237),
    "rosenbrock5": (rosenbrock5, {f"x{i}": {"type": "float", "low": -2, "high": 2} for i in range(5)}, 0.0),
}


def sleep_50ms(trial):
    time.sleep(0.05)
    return trial.params["x"] ** 2


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


def best_value(client, function: str, seed: int, sampler: str, scheduling: str, concurrency: int,
               prefetch: int | None = None) -> float:
    """The best value of one 100-trial run, as a loss (a maximized objective is negated)."""
    run = {"sampler": {"name": sampler, "seed": seed}, "budget": {"n_trials": 100},
           "scheduling": scheduling, "concurrency": concurrency, "prefetch": prefetch}
    data = None
    if function == HPO_TASK:
        from studyflow.config import load_study
        from studyflow.objectives.trading import walk_forward

        cfg = load_study(str(REPO / "config/studies/trading_tpe.yaml")).to_dict()
        for key in ("source", "report", "cluster"):
            cfg.pop(key)
        study, fn, data = {**cfg, **run, "sampler": {**cfg["sampler"], **run["sampler"]}}, None, _hpo_data(walk_forward)
    else:
        fn, space, _ = FUNCTIONS[function]
        study = {**run, "search_space": space}
    with tempfile.TemporaryDirectory() as tmp:
        result = optimize(fn, study, data=data, client=client, results_dir=tmp, progress=False)
    values = result.trials["value"]
    return -float(values.max()) if function == HPO_TASK else float(values.min())


# One real tuning task from the shipped examples: config/studies/trading_tpe.yaml (MA crossover
# with stop-loss and sizing on GOOG, in-sample Sharpe over 4 walk-forward folds; maximized).
HPO_TASK = "trading_tpe"
REPO = Path(__file__).resolve().parent.parent
_HPO_DATA: list = []


def _hpo_data(walk_forward):
    if not _HPO_DATA:
        _HPO_DATA.append(walk_forward())
    return _HPO_DATA[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--mean-ms", type=float, default=100)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--busy-trials", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per busy-share row")
    parser.add_argument("--sections", default="throughput,efficiency,busy")
    parser.add_argument("--functions", default="", help="efficiency tasks (default: all, "
                        "branin,hartmann6,rosenbrock5,trading_tpe)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    if "throughput" in sections:
        with connect(4) as client:
            section_throughput(client, args)
    if "efficiency" in sections:
        with connect(8) as client:  # 8 slots, so "concurrency 8" really has 8 trials in flight
            section_efficiency(client, args)
    if "busy" in sections:
        section_busy(args)


def section_throughput(client, args) -> None:
    print(f"\n## Throughput: {args.trials} trials, exponential durations (mean {args.mean_ms:g} ms), 4 workers\n")
    print("| scheduling | trials/s | worker utilization | throughput vs async |")
    print("| --- | ---: | ---: | ---: |")
    base = None
    for scheduling, window in (("async", 4), ("reproducible", 4), ("reproducible", 8)):
        rate, util = throughput(client, args.trials, args.mean_ms / 1000, scheduling, window)
        base = base or rate
        label = scheduling if scheduling == "async" else f"reproducible (c = {window})"
        print(f"| {label} | {rate:.1f} | {util:.0%} | {rate / base:.2f} |")


def section_efficiency(client, args) -> None:
    runs = {  # sampler, scheduling, concurrency, prefetch (None: the default, auto)
        "random search": ("random", "async", 4, None),
        "sequential TPE (concurrency 1)": ("tpe", "async", 1, 0),
        "TPE async, concurrency 8": ("tpe", "async", 8, None),
        "TPE async, concurrency 8, prefetch 0": ("tpe", "async", 8, 0),
        "TPE reproducible, c = 8": ("tpe", "reproducible", 8, None),
    }
    tasks = {name: optimum for name, (_, _, optimum) in FUNCTIONS.items()}
    tasks[HPO_TASK] = None
    for function in args.functions.split(",") if args.functions else tasks:
        optimum = tasks[function]
        what = f"min {optimum}" if optimum is not None else "maximize in-sample Sharpe"
        print(f"\n## Sample efficiency: {function} ({what}), 100 trials, {args.seeds} seeds, 8 workers\n")
        print("| runner | mean best | mean gap to optimum | mean rank | share of sequential TPE's gain over random |")
        print("| --- | ---: | ---: | ---: | ---: |")
        # losses[runner][seed]; rank 1 = the best runner on that seed (ties share the mean rank)
        losses = pd.DataFrame({name: [best_value(client, function, s, *spec) for s in range(args.seeds)]
                               for name, spec in runs.items()})
        ranks = losses.rank(axis=1).mean()
        means = losses.mean()
        gain = means["random search"] - means["sequential TPE (concurrency 1)"]
        for name, loss in means.items():
            share = (means["random search"] - loss) / gain if gain else float("nan")
            best = loss if optimum is not None else -loss
            gap = f"{loss - optimum:.4f}" if optimum is not None else "n/a"
            print(f"| {name} | {best:.4f} | {gap} | {ranks[name]:.2f} | {share:.0%} |")


def section_busy(args) -> None:
    """TPE against random search on the same cluster: random's sampler costs nothing, so its
    busy share is what the coordination allows; TPE's gap to it is the sampler's cost."""
    n = args.busy_trials
    print(f"\n## Busy share: 8 workers, 50 ms trials, {n} trials, median of {args.repeats}\n")
    print("| sampler | wall s | ideal s | workers busy | runs |")
    print("| --- | ---: | ---: | ---: | --- |")
    for sampler in ("random", "tpe"):
        study = {"search_space": {"x": {"type": "float", "low": 0, "high": 1}},
                 "sampler": {"name": sampler, "seed": 0}, "budget": {"n_trials": n}}
        walls, shares = [], []
        for _ in range(args.repeats):
            with connect(8) as client, tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = optimize(sleep_50ms, study, client=client, results_dir=tmp, progress=False)
                walls.append(time.perf_counter() - start)
            shares.append(result.trials["duration_s"].sum() / (8 * walls[-1]))
        runs = " ".join(f"{b:.0%}" for b in shares)
        print(f"| {sampler} | {statistics.median(walls):.1f} | {n * 0.05 / 8:.1f} | "
              f"{statistics.median(shares):.0%} | {runs} |")


if __name__ == "__main__":
    main()
