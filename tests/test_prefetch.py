"""Workers hold their next trials while they run one: what users see of it.

A worker asks for its next trial(s) while it runs the current one (see
`server._prefetch.prefetch_policy`): the round trip to the study server hides behind a running trial and short
trials travel in batches. These tests pin down the promises that come with it.
"""

from __future__ import annotations

import random

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from studyflow import optimize
from studyflow._attrs import NOT_RUN_ATTR
from studyflow.optuna_ext import CachedFitTPESampler

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def _overlaps(trials: pd.DataFrame) -> int:
    """How many trials were asked (started in Optuna's sense) before the one before finished."""
    t = trials.sort_values("number")
    return int((t["datetime_start"].iloc[1:].to_numpy() < t["datetime_complete"].iloc[:-1].to_numpy()).sum())


def test_a_worker_holds_its_next_random_trial_while_it_runs_one(client4, tmp_path):
    study = {"objective": "sf_objectives:instant", "search_space": SPACE, "concurrency": 1,
             "sampler": {"name": "random", "seed": 1}, "budget": {"n_trials": 200}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert trials["number"].tolist() == list(range(200)) and (trials["state"] == "COMPLETE").all()
    assert _overlaps(trials) > 0  # one loop, yet trials were leased ahead of the running one


def test_prefetch_0_with_concurrency_1_is_strictly_sequential(client4, tmp_path):
    study = {"objective": "sf_objectives:instant", "search_space": SPACE, "concurrency": 1,
             "prefetch": 0, "sampler": {"name": "tpe", "seed": 1}, "budget": {"n_trials": 40}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert len(trials) == 40 and (trials["state"] == "COMPLETE").all()
    assert _overlaps(trials) == 0  # each trial was sampled after the one before finished


def test_one_loop_of_instant_tpe_trials_gets_each_next_trial_sampled_while_its_reply_travels(client4, tmp_path):
    # Trials far shorter than a round trip: holding one would not help the loop, so the server
    # asks the next trial right after replying and hands it over with the next reply.
    study = {"objective": "sf_objectives:instant", "search_space": SPACE, "concurrency": 1, "name": "ahead",
             "sampler": {"name": "tpe", "seed": 1}, "budget": {"n_trials": 60}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert trials["number"].tolist() == list(range(60)) and (trials["state"] == "COMPLETE").all()
    assert _overlaps(trials) >= 30  # asked before the trial before it was told
    loaded = optuna.load_study(study_name="ahead", storage=JournalStorage(JournalFileBackend(str(result.journal))))
    assert len(loaded.trials) == 60  # every trial asked ahead was run: none left over at the end


@pytest.mark.parametrize("objective, sampler", [
    ("sleepy", "random"),  # the loops hold random trials ahead of the running ones
    ("instant", "tpe"),  # the server may hold a loop's next trial, asked while its reply travels
])
def test_trials_held_when_a_study_stops_are_left_out_of_the_table_and_marked_in_the_journal(
        client4, tmp_path, objective, sampler):
    # timeout_s stops the study while trials are held
    study = {"objective": f"sf_objectives:{objective}", "search_space": SPACE, "name": "held",
             "sampler": {"name": sampler, "seed": 1}, "budget": {"n_trials": 10_000, "timeout_s": 2.0}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    assert result.stop_reason == "timeout_s"
    assert (result.trials["state"] == "COMPLETE").all()
    loaded = optuna.load_study(study_name="held", storage=JournalStorage(JournalFileBackend(str(result.journal))))
    journal = loaded.get_trials(deepcopy=False)
    not_run = [t for t in journal if t.system_attrs.get(NOT_RUN_ATTR)]
    assert len(journal) == len(result.trials) + len(not_run)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in not_run)
    assert set(result.trials["number"]).isdisjoint(t.number for t in not_run)


@pytest.mark.parametrize(
    "directions, options, prune",
    [
        (["minimize"], {}, False),  # Optuna 5's default: multivariate, constant liar
        (["minimize"], {}, True),
        (["minimize"], {}, "hyperband"),  # the sampler is handed one bracket's view of the study
        (["minimize"], {"constant_liar": False}, True),
        (["maximize"], {"multivariate": False}, False),
        (["minimize", "maximize"], {}, False),
    ],
)
def test_cached_fit_tpe_proposes_exactly_what_optunas_tpe_proposes(directions, options, prune):
    """Asks that see the same finished trials share one split and fit, and change nothing.

    Values tie (rounded), trials finish out of order, some are pruned, several run at once and every 5th runs while
    40 others are asked, so under the constant liar running trials fall between finished ones
    in the "above" group, among the older trials that TPE weighs less.
    """

    def objective(t: optuna.Trial) -> list[float]:
        x, n = t.suggest_float("x", -5, 5), t.suggest_int("n", 1, 9, log=True)
        c = t.suggest_categorical("c", ["a", "b", "c"])
        return [round(x**2 + n + (c == "a"), 1), (x - 1) ** 2 - n][: len(directions)]

    proposals = []
    for sampler in (optuna.samplers.TPESampler(seed=3, **options),
                    CachedFitTPESampler(seed=3, **options)):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        pruner = optuna.pruners.HyperbandPruner(max_resource=3) if prune == "hyperband" else None
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=directions,
                                    pruner=pruner, study_name="tpe")
        running = {trial: objective(trial) for trial in [study.ask() for _ in range(3)]}
        study.sampler = sampler  # it finds 3 trials running (as after a resume)
        order = random.Random(7)
        params = []
        while len(params) < 120:
            for _ in range(order.randint(1, 3)):  # the asks of one batch, sampled at once
                trial = study.ask()
                running[trial] = objective(trial)
            done = [t for t in running if t.number % 5 or t.number + 40 < trial.number]
            for trial in order.sample(done, order.randint(0, len(done))):  # tells, any order
                values = running.pop(trial)
                if prune and order.random() < 0.1:
                    trial.report(values[0], step=1)
                    trial.should_prune()  # a hyperband pruner sets up its brackets here
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    study.tell(trial, values)
                params.append((trial.number, trial.params))
        proposals.append(params)
    assert proposals[0] == proposals[1]
    assert len({p["x"] for _, p in proposals[0]}) == len(proposals[0])
