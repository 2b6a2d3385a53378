"""Does an unchanged define-by-run objective get the sampler it asked for?

An Optuna script's objective suggests every parameter itself (`search_space: {}` in the study
file). Its trials must be as good as those of the same study with the parameters declared.

1. The bowl x*x + y*y on [-10, 10]^2, 200 trials, concurrency 2 and 4: best value and median
   of trials 100-199 (mean over --seeds seeds) for TPE with the space declared, TPE
   define-by-run and random search define-by-run.
2. Sample efficiency with 8 trials in flight (8 workers): Hartmann-6 and Branin, 100 trials,
   mean best over --seeds seeds and the share of sequential TPE's gain over random search, for
   TPE with the space declared and TPE define-by-run.

    python benchmarks/define_by_run.py [--seeds 5] [--trials 200] [--sections table,efficiency]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import cloudpickle

import scheduling
from studyflow import optimize
from studyflow.driver import connect

cloudpickle.register_pickle_by_value(scheduling)  # workers need not find the module
BOWL = {"x": {"type": "float", "low": -10, "high": 10}, "y": {"type": "float", "low": -10, "high": 10}}


def bowl(trial):
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_float("y", -10, 10)
    return x * x + y * y


def suggesting(function: str):
    """The benchmark function as a plain Optuna objective: it suggests each parameter itself."""
    fn, space, _ = scheduling.FUNCTIONS[function]

    def objective(trial):
        for name, spec in space.items():
            trial.suggest_float(name, spec["low"], spec["high"])
        return fn(trial)

    return objective


def run(client, objective, space: dict, sampler: str, seed: int, n_trials: int, concurrency: int,
        prefetch: int | None = None):
    study = {"search_space": space, "sampler": {"name": sampler, "seed": seed}, "budget": {"n_trials": n_trials},
             "concurrency": concurrency, "prefetch": prefetch, "name": "bench"}
    with tempfile.TemporaryDirectory() as tmp:
        result = optimize(objective, study, client=client, results_dir=tmp, progress=False)
    trials = result.trials.sort_values("number")
    assert len(trials) == n_trials and (trials["state"] == "COMPLETE").all()
    return trials["value"]


def section_table(args) -> None:
    runners = {"TPE, parameters in search_space": (BOWL, "tpe"),
               "TPE, define-by-run": ({}, "tpe"),
               "random, define-by-run": ({}, "random")}
    half = args.trials // 2
    for concurrency in (2, 4):
        print(f"\n## The bowl, {args.trials} trials, concurrency {concurrency}, {args.seeds} seeds\n")
        print(f"| parameters declared | sampler | mean best | mean median of trials {half}-{args.trials - 1} |")
        print("| --- | --- | ---: | ---: |")
        with connect(concurrency) as client:
            for name, (space, sampler) in runners.items():
                values = [run(client, bowl, space, sampler, seed, args.trials, concurrency)
                          for seed in range(1, args.seeds + 1)]
                best = statistics.mean(v.min() for v in values)
                late = statistics.mean(v.iloc[half:].median() for v in values)
                declared, _, label = name.partition(", ")
                print(f"| {label} | {declared.lower()} | {best:.3f} | {late:.2f} |")


def section_efficiency(args) -> None:
    with connect(8) as client:
        for function in ("hartmann6", "branin"):
            fn, space, optimum = scheduling.FUNCTIONS[function]
            runners = {  # objective, declared space, sampler, concurrency, prefetch
                "random search": (fn, space, "random", 8, None),
                "sequential TPE (concurrency 1), declared": (fn, space, "tpe", 1, 0),
                "TPE, concurrency 8, declared": (fn, space, "tpe", 8, None),
                "TPE, concurrency 8, define-by-run": (suggesting(function), {}, "tpe", 8, None),
            }
            print(f"\n## Sample efficiency: {function} (min {optimum}), 100 trials, {args.seeds} seeds, 8 workers\n")
            print("| runner | mean best | share of sequential TPE's gain over random |")
            print("| --- | ---: | ---: |")
            means = {name: statistics.mean(run(client, obj, sp, sampler, seed, 100, c, prefetch).min()
                                           for seed in range(args.seeds))
                     for name, (obj, sp, sampler, c, prefetch) in runners.items()}
            gain = means["random search"] - means["sequential TPE (concurrency 1), declared"]
            for name, best in means.items():
                print(f"| {name} | {best:.4f} | {(means['random search'] - best) / gain:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=200, help="trials per bowl run")
    parser.add_argument("--sections", default="table,efficiency")
    args = parser.parse_args()
    sections = args.sections.split(",")
    if "table" in sections:
        section_table(args)
    if "efficiency" in sections:
        section_efficiency(args)


if __name__ == "__main__":
    main()
