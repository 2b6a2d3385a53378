"""An unchanged Optuna objective gets the sampler it asked for: plain Optuna's own trials.

With one trial at a time and nothing held ahead, a seeded study served by studyflow proposes
exactly the trials `optuna.create_study(sampler=...).optimize(objective, n)` proposes in one
process, whether the parameters come from the study file, are suggested define-by-run, or
depend on each other. Under concurrency the sampler must still learn.
"""

from __future__ import annotations

import statistics

import optuna
import pytest

import sf_objectives
from studyflow import ConfigError
from studyflow import load_study
from studyflow import optimize

BOWL_SPACE = {"x": {"type": "float", "low": -10, "high": 10},
              "y": {"type": "float", "low": -10, "high": 10}}
SAMPLERS = {  # study file's sampler section -> the same sampler built by hand, as a user would
    "tpe-multivariate": ({"name": "tpe", "options": {"multivariate": True}},
                         lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True)),
    "tpe-independent": ({"name": "tpe", "options": {"multivariate": False}},
                        lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=False)),
    "random": ({"name": "random"}, lambda seed: optuna.samplers.RandomSampler(seed=seed)),
    "qmc": ({"name": "qmc"}, lambda seed: optuna.samplers.QMCSampler(seed=seed)),
    "cmaes": ({"name": "cmaes"}, lambda seed: optuna.samplers.CmaEsSampler(seed=seed)),
    "gp": ({"name": "gp"}, lambda seed: optuna.samplers.GPSampler(seed=seed)),
    # its crossover draws even when mutation leaves it nothing to propose
    "nsga2": ({"name": "nsga2", "options": {"population_size": 6}},
              lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=6)),
}
SPACES = {  # (objective, search_space in the study file)
    "declared": ("bowl", BOWL_SPACE),
    "define-by-run": ("bowl", {}),
    "conditional": ("conditional", {}),
    "narrowing": ("narrowing", {}),  # a suggest unlike the shared space's: the server answers it
}
N_TRIALS = {"gp": 14}  # GP's asks take a few tenths of a second: past its 10 start-up trials


def _params_in_order(study: optuna.Study, numbers: list[int]) -> list[dict]:
    by_number = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    return [by_number[n] for n in numbers]


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_one_trial_at_a_time_gives_plain_optunas_trials(client4, tmp_path, sampler, space):
    objective, search_space = SPACES[space]
    section, build = SAMPLERS[sampler]
    n_trials = N_TRIALS.get(section["name"], 24)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plain = optuna.create_study(sampler=build(5))
    plain.optimize(getattr(sf_objectives, objective), n_trials=n_trials)

    study = {"objective": f"sf_objectives:{objective}", "search_space": search_space,
             "sampler": {**section, "seed": 5}, "budget": {"n_trials": n_trials},
             "concurrency": 1, "prefetch": 0}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    numbers = result.trials["number"].tolist()
    assert numbers == list(range(n_trials))
    assert _params_in_order(result.study, numbers) == [t.params for t in plain.trials]
    assert result.trials["value"].tolist() == [t.value for t in plain.trials]


def test_a_declared_branch_with_define_by_run_leaves_gives_plain_optunas_trials(client4, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=2))
    plain.optimize(sf_objectives.conditional, n_trials=24)
    study = {"objective": "sf_objectives:conditional", "sampler": {"name": "tpe", "seed": 2},
             "search_space": {"kind": {"type": "categorical", "choices": ["tree", "linear"]}},
             "budget": {"n_trials": 24}, "concurrency": 1, "prefetch": 0}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    assert _params_in_order(result.study, list(range(24))) == [t.params for t in plain.trials]


def _suggests_served(dask_scheduler) -> int:
    plugin = dask_scheduler.plugins.get("studyflow")  # registered by the first study driven
    return plugin.suggests_served if plugin is not None else 0


def test_define_by_run_suggests_of_the_shared_space_cost_no_round_trip(client4, tmp_path):
    """Multivariate TPE samples a trial's shared space at the ask, as Optuna does at its first
    suggest: a define-by-run objective's suggests of it are answered on the worker, so a trial
    costs its exchange, not also one round trip per parameter; what it used is recorded."""
    before = client4.run_on_scheduler(_suggests_served)
    study = {"objective": "sf_objectives:bowl", "sampler": {"name": "tpe", "seed": 3,
                                                           "options": {"multivariate": True}},
             "budget": {"n_trials": 60}, "concurrency": 2}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    served = client4.run_on_scheduler(_suggests_served) - before
    trials = result.study.get_trials(deepcopy=False)
    assert len(trials) == 60 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(set(t.params) == {"x", "y"} and set(t.distributions) == {"x", "y"} for t in trials)
    # as `bowl` computes it: `x ** 2` (libm's pow) may differ from `x * x` in the last bit
    assert all(t.value == t.params["x"] * t.params["x"] + t.params["y"] * t.params["y"] for t in trials)
    # TPE's 10 start-up trials are sampled independently, at each suggest, as in Optuna; so are
    # the few asked while they ran. Every later trial's 2 suggests are answered on the worker
    # (120 round trips before relative parameters travelled with the lease).
    assert served <= 2 * (10 + 8), served


@pytest.mark.parametrize("sampler", ["random", "tpe-independent"])
def test_define_by_run_suggests_of_a_sampler_without_relative_sampling_cost_no_round_trip(
        client4, tmp_path, sampler):
    """Random search and TPE without `multivariate` draw each parameter at its suggest. With
    trials in flight together, the server draws the shared space's at the ask instead (as it
    samples a declared space), so they travel with the trial; a suggest of another
    distribution (`narrowing`'s x from trial 10 on) is still drawn from that one."""
    section, _ = SAMPLERS[sampler]
    for objective in ("bowl", "narrowing"):
        before = client4.run_on_scheduler(_suggests_served)
        study = {"name": f"{objective}-{sampler}", "objective": f"sf_objectives:{objective}",
                 "sampler": {**section, "seed": 4}, "budget": {"n_trials": 60}, "concurrency": 2,
                 "prefetch": 0}
        result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
        served = client4.run_on_scheduler(_suggests_served) - before
        trials = result.study.get_trials(deepcopy=False)
        assert len(trials) == 60 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert all(t.value == t.params["x"] * t.params["x"] + t.params["y"] * t.params["y"] for t in trials)
        bounds = {t.number: t.distributions["x"].high for t in trials}
        if objective == "bowl":
            assert set(bounds.values()) == {10}
            # the 2 trials asked before any had finished ask for both; none after that
            assert served <= 2 * 2, served
        else:
            assert all(bounds[n] == (10 if n < 10 else 5) for n in bounds)
            assert all(abs(t.params["x"]) <= bounds[t.number] for t in trials)
            # x from trial 10 on: one round trip each (its y, answered on the worker, goes with it)
            assert served <= 2 * 2 + 50, served


def _late_median(client, tmp_path, name: str, **fields) -> float:
    """Median value of trials 100-199 of a 200-trial TPE study on the bowl, 4 at a time."""
    study = {"objective": "sf_objectives:bowl", "sampler": {"name": "tpe", "seed": 1},
             "budget": {"n_trials": 200}, "concurrency": 4, **fields}
    result = optimize(None, study, client=client, results_dir=tmp_path / name, progress=False)
    late = result.trials.sort_values("number")["value"].iloc[100:200]
    assert len(late) == 100
    return statistics.median(late)


def test_define_by_run_tpe_learns_as_well_as_a_declared_space_with_4_in_flight(client4, tmp_path):
    declared = _late_median(client4, tmp_path, "declared", search_space=BOWL_SPACE)
    define_by_run = _late_median(client4, tmp_path, "define-by-run")
    random_search = _late_median(client4, tmp_path, "random", sampler={"name": "random", "seed": 1})
    assert define_by_run <= 2 * declared, (define_by_run, declared)
    assert define_by_run < random_search / 5, (define_by_run, random_search)


@pytest.mark.parametrize("fields, key", [
    ({"pruner": {"name": "median"}}, "pruner.name"),
    ({"budget": {"patience": 5}}, "budget.patience"),
    ({"search_space": {}}, "search_space"),
])
def test_reproducible_scheduling_refuses_what_it_cannot_replay_before_any_cluster(fields, key):
    study = {"objective": "sf_objectives:bowl", "scheduling": "reproducible", "search_space": BOWL_SPACE,
             "budget": {"n_trials": 5}, **fields}
    with pytest.raises(ConfigError) as caught:
        load_study(study)
    assert caught.value.key == key
    assert "reproducible" in str(caught.value) and "\n" not in str(caught.value)


def test_reproducible_study_whose_objective_suggests_an_undeclared_name_stops_naming_it(client4, tmp_path):
    study = {"objective": "sf_objectives:bowl", "scheduling": "reproducible", "concurrency": 2,
             "search_space": {"x": BOWL_SPACE["x"]}, "budget": {"n_trials": 20}}
    with pytest.raises(ConfigError) as caught:
        optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    assert caught.value.key == "search_space.y"
    assert "define-by-run" in str(caught.value) and "\n" not in str(caught.value)


PRUNERS = {  # study file's pruner section -> the same pruner built by hand
    "median": ({"name": "median"}, optuna.pruners.MedianPruner),
    "successive_halving": ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
    "hyperband": ({"name": "hyperband", "options": {"max_resource": 10}},
                  lambda: optuna.pruners.HyperbandPruner(max_resource=10)),
}


@pytest.mark.parametrize("pruner", list(PRUNERS))
def test_a_pruned_tpe_study_one_trial_at_a_time_gives_plain_optunas_trials_and_prunes(client4, tmp_path, pruner):
    # Hyperband hands the sampler a view of one bracket's trials (named by the study's name)
    section, build = PRUNERS[pruner]
    study = {"objective": "sf_objectives:learning_curve", "search_space": {},
             "sampler": {"name": "tpe", "seed": 2}, "pruner": section, "budget": {"n_trials": 30},
             "concurrency": 1, "prefetch": 0}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=2), pruner=build(),
                                study_name=result.study.study_name)
    plain.optimize(sf_objectives.learning_curve, n_trials=30)

    numbers = result.trials["number"].tolist()
    assert numbers == list(range(30))
    assert _params_in_order(result.study, numbers) == [t.params for t in plain.trials]
    assert result.trials["state"].tolist() == [t.state.name for t in plain.trials]
    assert 0 < result.trials["state"].eq("PRUNED").sum() < 30
