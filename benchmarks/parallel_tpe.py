"""What concurrency costs TPE itself: plain Optuna, one process, no studyflow and no cluster.

`scheduling.py --sections efficiency` measures studyflow with 8 trials in flight. This script
asks whether any engine could do better with Optuna's TPE: it plays a study with exactly `c`
trials in flight (ask until `c` run, tell the oldest, repeat: what equal-length trials on `c`
workers give) and compares ways of treating the running trials when asking:

- Optuna's default: constant liar (running trials join the "bad" group);
- no liar (running trials ignored, as Hyperopt does);
- startup counting running trials (random search ends after `n_startup_trials` asks, not finishes);
- believers: a running trial takes the value of its nearest finished neighbour, or the median;
- local penalty: no liar, and a candidate's acquisition is lowered near running trials.

Tables: share of sequential TPE's gain over random search (mean best of 100 trials), by
concurrency and by treatment, and how many sequential trials reach what 100 trials at the
highest concurrency reach.

    python benchmarks/parallel_tpe.py [--seeds 100] [--functions hartmann6] [--processes 2]
"""

from __future__ import annotations

import argparse
from multiprocessing import Pool
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import FloatDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe.sampler import _split_trials
from optuna.samplers._tpe.sampler import default_gamma
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from optuna.trial import create_trial

from scheduling import FUNCTIONS

N_TRIALS = 100
PENALTY_WIDTH = 0.05  # of each parameter's range


class StartupByAsksTPE(TPESampler):
    """Optuna's TPE (constant liar), whose random startup ends after `n_startup_trials` trials
    were asked (finished or running) rather than finished."""

    def _sample_relative(self, study, trial, search_space):
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        seen = sum(t.number != trial.number for t in study._get_trials(deepcopy=False, states=states))
        if not search_space or seen < self._n_startup_trials:
            return {}
        return self._sample(study, trial, search_space)


class RunningAwareTPE(TPESampler):
    """TPE without the liar, treating running trials another way (`how`): a believer gives each
    one a guessed value and splits it with the finished ones; the local penalty lowers the
    acquisition of candidates near them.

    Only meant for this comparison: single objective, float parameters, nothing pruned."""

    def __init__(self, how: str, **kwargs: Any) -> None:
        super().__init__(constant_liar=False, **kwargs)
        self._how = how

    def _sample(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and t.number != trial.number
                   and search_space.keys() <= t.params.keys()]
        names = list(search_space)
        span = np.array([search_space[n].high - search_space[n].low for n in names])

        def unit(ts: list[FrozenTrial]) -> np.ndarray:
            return np.array([[t.params[n] for n in names] for t in ts]).reshape(len(ts), len(names)) / span

        split = list(done)
        if self._how.startswith("believer") and running:
            values = np.array([t.value for t in done])
            if self._how == "believer: nearest finished":
                d2 = ((unit(running)[:, None, :] - unit(done)[None]) ** 2).sum(axis=-1)
                guesses = values[np.argmin(d2, axis=1)]
            else:
                guesses = np.full(len(running), np.median(values))
            split += [create_trial(params=t.params, distributions=t.distributions, value=float(guess))
                      for t, guess in zip(running, guesses)]
        below, above = _split_trials(study, split, default_gamma(len(split)))
        mpe_below = self._build_parzen_estimator(study, search_space, below, handle_below=True)
        mpe_above = self._build_parzen_estimator(study, search_space, above, handle_below=False)
        samples = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acquisition = self._compute_acquisition_func(samples, mpe_below, mpe_above)
        if self._how == "local penalty" and running:
            candidates = np.stack([samples[n] for n in names], axis=1) / span
            d2 = ((candidates[:, None, :] - unit(running)[None]) ** 2).sum(axis=-1)
            acquisition = acquisition + np.log1p(-np.exp(-d2 / (2 * PENALTY_WIDTH**2)) + 1e-12).sum(axis=1)
        best = TPESampler._compare(samples, acquisition)
        return {n: d.to_external_repr(best[n]) for n, d in search_space.items()}


TREATMENTS = ("constant liar (Optuna)", "no liar", "startup counts running",
              "believer: nearest finished", "believer: median", "local penalty")


def make_sampler(how: str, seed: int) -> optuna.samplers.BaseSampler:
    if how == "random search":
        return optuna.samplers.RandomSampler(seed=seed)
    if how == "constant liar (Optuna)":
        return TPESampler(seed=seed)
    if how == "no liar":
        return TPESampler(seed=seed, constant_liar=False)
    if how == "startup counts running":
        return StartupByAsksTPE(seed=seed)
    return RunningAwareTPE(how, seed=seed)


def best_so_far(job: tuple[str, str, int, int]) -> np.ndarray:
    """Best value after each told trial of one study with `concurrency` trials in flight."""
    function, how, concurrency, seed = job
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    fn, spec, _ = FUNCTIONS[function]
    space = {name: FloatDistribution(p["low"], p["high"]) for name, p in spec.items()}
    study = optuna.create_study(sampler=make_sampler(how, seed))
    running: list[optuna.Trial] = []
    asked, values = 0, []
    while asked < N_TRIALS or running:
        while asked < N_TRIALS and len(running) < concurrency:
            running.append(study.ask(space))
            asked += 1
        trial = running.pop(0)
        values.append(fn(trial))
        study.tell(trial, values[-1])
    return np.minimum.accumulate(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--functions", default="hartmann6", help=f"comma-separated, of {', '.join(FUNCTIONS)}")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    top = max(levels)
    runs = [("random search", 1)] + [("constant liar (Optuna)", c) for c in levels]
    runs += [(how, top) for how in TREATMENTS[1:]]
    with Pool(args.processes) as pool:
        for function in args.functions.split(","):
            jobs = [(function, how, c, seed) for how, c in runs for seed in range(args.seeds)]
            curves = np.array(pool.map(best_so_far, jobs, chunksize=4)).reshape(len(runs), args.seeds, N_TRIALS)
            table(function, runs, curves, top, args.seeds)


def table(function: str, runs: list[tuple[str, int]], curves: np.ndarray, top: int, seeds: int) -> None:
    final = curves[:, :, -1]
    mean = final.mean(axis=1)
    sequential = runs.index(("constant liar (Optuna)", 1))
    gain = mean[0] - mean[sequential]
    print(f"\n## TPE with trials in flight: {function}, {N_TRIALS} trials, {seeds} seeds (plain Optuna)\n")
    print("| treatment of running trials | in flight | mean best | std. error | share of sequential TPE's gain over random |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (how, c), m, f in zip(runs, mean, final):
        print(f"| {how} | {c} | {m:.4f} | {f.std(ddof=1) / np.sqrt(seeds):.4f} | {(mean[0] - m) / gain:.0%} |")
    at_top = mean[runs.index(("constant liar (Optuna)", top))]
    reached = curves[sequential].mean(axis=0)
    needed = int(np.argmax(reached <= at_top)) + 1 if (reached <= at_top).any() else N_TRIALS
    print(f"\nSequential TPE reaches the mean best of {N_TRIALS} trials with {top} in flight after "
          f"{needed} trials (mean best-so-far over the seeds).")


if __name__ == "__main__":
    main()
