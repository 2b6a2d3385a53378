"""Any Optuna sampler or pruner, or the user's own, by name in the study file.

Beyond the short names (tpe, random, ...), `sampler.name` and `pruner.name` take Optuna's
other classes (`nsga3`, `bruteforce`, `threshold`, `wilcoxon`) and any class as
'module:Class' (`optuna.samplers:NSGAIIISampler`, a class of the user's package), built with
`seed` and `options`. Served one trial at a time they give plain Optuna's trials, and a
sampler that stops the study itself (BruteForceSampler, once its space is spent) stops it.
"""

from __future__ import annotations

import optuna
import pytest

import sf_objectives
from studyflow import ConfigError
from studyflow import load_study
from studyflow import optimize
from studyflow.optuna_ext import check_sampler_options

TWO_OBJECTIVES = {  # study file's sampler section -> the same sampler built by hand
    "nsga3": ({"name": "nsga3", "options": {"population_size": 6}},
              lambda seed: optuna.samplers.NSGAIIISampler(seed=seed, population_size=6)),
    "module path": ({"name": "optuna.samplers:NSGAIIISampler", "options": {"population_size": 6}},
                    lambda seed: optuna.samplers.NSGAIIISampler(seed=seed, population_size=6)),
}


def _plain(objective, n_trials: int, **create) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(**create)
    study.optimize(objective, n_trials=n_trials)
    return study


def _one_at_a_time(client, tmp_path, objective: str, n_trials: int, **fields):
    study = {"objective": f"sf_objectives:{objective}", "search_space": {}, "budget": {"n_trials": n_trials},
             "concurrency": 1, "prefetch": 0, **fields}
    return optimize(None, study, client=client, results_dir=tmp_path, progress=False)


@pytest.mark.parametrize("sampler", list(TWO_OBJECTIVES))
def test_nsga3_by_short_name_or_module_path_gives_plain_optunas_trials(client4, tmp_path, sampler):
    section, build = TWO_OBJECTIVES[sampler]
    directions = ["minimize", "minimize"]
    plain = _plain(sf_objectives.two_objectives, 20, sampler=build(3), directions=directions)
    result = _one_at_a_time(client4, tmp_path, "two_objectives", 20, directions=directions,
                            sampler={**section, "seed": 3})
    assert [t.params for t in result.study.trials] == [t.params for t in plain.trials]


def test_bruteforce_runs_each_point_once_and_stops_the_study_as_plain_optunas(client4, tmp_path):
    plain = _plain(sf_objectives.discrete, 100, sampler=optuna.samplers.BruteForceSampler(seed=1))
    assert len(plain.trials) == 12  # Optuna's sampler stopped it when the 4 x 3 points were spent
    result = _one_at_a_time(client4, tmp_path, "discrete", 100, sampler={"name": "bruteforce", "seed": 1})
    assert [t.params for t in result.study.trials] == [t.params for t in plain.trials]
    assert result.best()["stop_reason"] == "study.stop()"


def test_a_users_own_sampler_class_proposes_the_trials(client4, tmp_path):
    study = {"objective": "sf_objectives:bowl", "search_space": {"x": {"type": "float", "low": 0, "high": 8}},
             "sampler": {"name": "sf_samplers:Stepping", "options": {"start": 0.5}}, "budget": {"n_trials": 8}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    expected = {n: (0.5 + n * 0.125) % 1.0 for n in range(8)}  # declared x, and y suggested define-by-run
    assert dict(zip(result.trials["number"], result.trials["params_x"])) == {n: f * 8 for n, f in expected.items()}
    assert dict(zip(result.trials["number"], result.trials["params_y"])) == {n: f * 20 - 10 for n, f in expected.items()}


@pytest.mark.parametrize("name", ["threshold", "optuna.pruners:ThresholdPruner"])
def test_a_threshold_pruner_prunes_the_trials_plain_optuna_prunes(client4, tmp_path, name):
    plain = _plain(sf_objectives.learning_curve, 20, sampler=optuna.samplers.TPESampler(seed=4),
                   pruner=optuna.pruners.ThresholdPruner(upper=1.2))
    result = _one_at_a_time(client4, tmp_path, "learning_curve", 20, sampler={"name": "tpe", "seed": 4},
                            pruner={"name": name, "options": {"upper": 1.2}})
    assert result.trials["state"].tolist() == [t.state.name for t in plain.trials]
    assert 0 < result.trials["state"].eq("PRUNED").sum() < 20


@pytest.mark.parametrize(("section", "key", "words"), [
    ({"sampler": {"name": "no_such_module:Sampler"}}, "sampler.name", "No module named 'no_such_module'"),
    ({"sampler": {"name": "optuna.samplers:NoSuchSampler"}}, "sampler.name", "has no 'NoSuchSampler'"),
    ({"sampler": {"name": "optuna.pruners:MedianPruner"}}, "sampler.name", "not an Optuna sampler"),
    ({"pruner": {"name": "optuna.samplers:RandomSampler"}}, "pruner.name", "not an Optuna pruner"),
    ({"sampler": {"name": "sf_samplers:Stepping", "seed": 3}}, "sampler.seed", "takes no seed"),
    ({"sampler": {"name": "bruteforce", "options": {"nope": 1}}}, "sampler.options", "nope"),
    ({"sampler": {"name": "not a class"}}, "sampler.name", "module:Class"),
])
def test_a_sampler_or_pruner_that_cannot_be_built_fails_in_one_line_naming_the_key(write_study, section, key, words):
    path = write_study(objective="m:f", search_space={"x": {"type": "float", "low": 0, "high": 1}}, **section)
    with pytest.raises(ConfigError) as info:
        check_sampler_options(load_study(path))
    assert info.value.key == key and words in str(info.value) and "\n" not in str(info.value)
