"""The trial an objective gets on a worker is an `optuna.Trial` for real objectives.

Objectives written for plain Optuna (tests/sf_optuna_examples.py) run unchanged on a real
4-worker LocalCluster: conditional define-by-run spaces, pruning, constraints (stored in a user
attr as for `constraints_func`, or set with `Trial.set_constraint`), and the rest of the
trial's API with `trial.study` as a read-only view of the study.
"""

from __future__ import annotations

from datetime import datetime

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.distributions import json_to_distribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from studyflow import StudyAbortedError
from studyflow import optimize
from studyflow._attrs import ERROR_ATTR
from studyflow._attrs import NOT_RUN_ATTR

EXAMPLES = "sf_optuna_examples"


def _journal(result) -> optuna.Study:
    """The study as Optuna reads it back from the journal studyflow wrote."""
    storage = JournalStorage(JournalFileBackend(str(result.journal)))
    return optuna.load_study(study_name=result.config.name, storage=storage)


def _run(client, tmp_path, objective: str, **study):
    """A study of one of tests/sf_optuna_examples.py's objectives, named after it."""
    study = {"objective": f"{EXAMPLES}:{objective}", "name": objective, **study}
    return optimize(None, study, client=client, results_dir=tmp_path, progress=False)


def test_optuna_examples_run_unchanged_sklearn_pruning_and_constraints_func(client4, tmp_path):
    """Three objectives as Optuna's examples write them, each its own study on the cluster."""
    _check_sklearn(_run(client4, tmp_path, "sklearn_simple", direction="maximize",
                        sampler={"name": "tpe", "seed": 0}, budget={"n_trials": 16}))
    _check_pruning(_run(client4, tmp_path, "sgd_pruning", sampler={"name": "tpe", "seed": 1},
                        pruner={"name": "percentile",
                                "options": {"percentile": 25.0, "n_startup_trials": 3}},
                        budget={"n_trials": 20}))
    result = _run(client4, tmp_path, "constrained_user_attr", sampler={"name": "tpe", "seed": 2},
                  constraints={"user_attr": "constraint"}, budget={"n_trials": 24})
    loaded = _journal(result)
    for t in loaded.get_trials(states=(TrialState.COMPLETE,)):
        assert [t.constraints["0"], t.constraints["1"]] == t.user_attrs["constraint"]
    _assert_feasible_best(result, loaded, {"0", "1"})


def _check_sklearn(result) -> None:
    """The model is a categorical choice; each model's hyperparameters exist only for it."""
    trials = _journal(result).trials
    assert len(trials) == 16 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert 0 < t.value <= 1
        if t.params["classifier"] == "SVC":
            assert set(t.params) == {"classifier", "svc_c"}
            assert t.distributions["svc_c"] == FloatDistribution(1e-10, 1e10, log=True)
        else:
            assert set(t.params) == {"classifier", "rf_max_depth", "rf_n_estimators"}
            assert t.distributions["rf_max_depth"] == IntDistribution(2, 32, log=True)
            assert t.params["rf_n_estimators"] in (4, 8, 12)
    assert {t.params["classifier"] for t in trials} == {"SVC", "RandomForest"}
    assert result.best()["best_values"][0] == max(t.value for t in trials)


def _check_pruning(result) -> None:
    """Some trials were pruned mid-way; the complete ones reported every epoch."""
    trials = _journal(result).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(pruned) + len(complete) == 20 and pruned and complete
    for t in complete:
        assert sorted(t.intermediate_values) == list(range(12))
        assert t.intermediate_values[11] == pytest.approx(t.value)
    for t in pruned:  # stopped where the pruner said so; Optuna keeps its last report as value
        last = max(t.intermediate_values)
        assert sorted(t.intermediate_values) == list(range(last + 1))
        assert t.value == t.intermediate_values[last]


def _assert_feasible_best(result, loaded: optuna.Study, keys: set[str]) -> None:
    """Every complete trial carries its constraints in the journal; the best is feasible and
    the best of the feasible ones, and the trials table shows the constraints."""
    complete = loaded.get_trials(states=(TrialState.COMPLETE,))
    assert complete and all(set(t.constraints) == keys for t in complete)
    feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    assert feasible and len(feasible) < len(complete)
    best = loaded.best_trial
    assert all(v <= 0 for v in best.constraints.values())
    assert best.value == min(t.value for t in feasible)
    assert result.best()["best_number"] == best.number
    table = result.trials.set_index("number")
    for key in keys:
        assert table.loc[best.number, f"constraints_{key}"] == best.constraints[key]


def test_set_constraint_reaches_the_journal_and_tpe_best_is_feasible(client4, tmp_path):
    result = _run(client4, tmp_path, "constrained_set_constraint",
                  sampler={"name": "tpe", "seed": 3}, budget={"n_trials": 24})
    _assert_feasible_best(result, _journal(result), {"c0", "c1"})


def test_trials_answered_from_the_store_keep_their_constraints(client4, tmp_path):
    bounds = {"type": "float", "low": -2, "high": 10}
    study = {"objective": f"{EXAMPLES}:constrained_set_constraint",
             "search_space": {"x": bounds, "y": bounds},
             "sampler": {"name": "random", "seed": 4}, "budget": {"n_trials": 8}}
    first, again = (optimize(None, study | {"name": name}, client=client4, results_dir=tmp_path,
                             progress=False) for name in ("first", "again"))
    assert again.trials["cached"].all()
    ran = {t.number: t.constraints for t in _journal(first).trials}
    assert {t.number: t.constraints for t in _journal(again).trials} == ran
    assert again.best()["best_number"] == first.best()["best_number"]


API_DISTRIBUTIONS = {
    "x": FloatDistribution(0, 1), "n": IntDistribution(1, 9, step=2),
    "lr": FloatDistribution(1e-4, 1e-1, log=True), "kind": CategoricalDistribution(["a", "b"]),
    "u": FloatDistribution(0, 1), "lu": FloatDistribution(1e-3, 1, log=True),
    "du": FloatDistribution(0, 1, step=0.25),
}


def test_remote_trial_offers_optuna_trials_api_and_a_read_only_study_view(client4, tmp_path):
    artifacts = tmp_path / "optuna-artifacts"
    artifacts.mkdir()
    result = _run(client4, tmp_path, "reports_its_api",
                  objective_args={"artifact_base": str(artifacts)},
                  search_space={"x": {"type": "float", "low": 0, "high": 1}},
                  sampler={"name": "tpe", "seed": 5}, budget={"n_trials": 6},
                  concurrency=1, prefetch=0)  # one at a time: trial i sees trials 0..i-1 done
    loaded = _journal(result)
    trials = loaded.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6  # nothing enqueued
    for t in trials:
        seen = t.user_attrs["seen"]
        _assert_trial_api(seen, t)
        _assert_artifact(t, loaded, artifacts, seen["artifact_id"])
        _assert_study_view(seen["study"], trials[: t.number])
        for key in ("enqueue_error", "optimize_error", "set_user_attr_error"):
            assert seen[key].startswith("ReadOnlyStudyError: studyflow: trial.study.")
            assert "read-only" in seen[key]
        for key in ("system_attrs_error", "relative_params_error"):
            assert "studyflow" in seen[key]


def _assert_trial_api(seen: dict, trial) -> None:
    """What the objective saw of its trial is what the journal holds of it."""
    assert seen["is_base_trial"] and seen["is_trial"]
    assert seen["number"] == trial.number and seen["params"] == trial.params
    decoded = {k: json_to_distribution(v) for k, v in seen["distributions"].items()}
    assert decoded == trial.distributions == API_DISTRIBUTIONS
    assert seen["datetime_start_type"] == "datetime"
    assert datetime.fromisoformat(seen["datetime_start"]) == trial.datetime_start
    assert seen["user_attrs"] == {"tag": "api"}
    assert seen["constraints"] == {"c": -1.0} == trial.constraints
    assert len(seen["deprecations"]) == 3
    assert all("suggest_float" in message for message in seen["deprecations"])


def _assert_artifact(trial, loaded: optuna.Study, base, artifact_id: str) -> None:
    """`optuna.artifacts.upload_artifact(study_or_trial=trial)` wrote the file to the artifact
    store and the server recorded it on the trial, where Optuna's own helpers find it."""
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=loaded._storage)
    expected = [(artifact_id, f"trial-{trial.number}.txt")]
    assert [(m.artifact_id, m.filename) for m in metas] == expected
    assert (base / artifact_id).read_text() == f"trial {trial.number}"


def _assert_study_view(study: dict, before: list) -> None:
    """What `trial.study` showed the objective: the study as it was when the trial ran."""
    assert study["name"] == "reports_its_api"
    assert study["directions"] == ["MINIMIZE"] and study["direction"] == "MINIMIZE"
    assert study["n_complete"] == len(before) and study["n_trials"] == len(before) + 1
    assert study["user_attrs"] == {}
    if not before:
        assert study["best_value"] is None
        return
    best = min(before, key=lambda t: t.value)
    assert study["best_value"] == best.value and study["best_number"] == best.number
    assert study["best_params"] == best.params


def test_a_suggest_that_cannot_return_a_declared_value_fails_the_trial_naming_the_key(client4, tmp_path):
    # the file's range (or log scale, step, choices) is the study's, but never a float from
    # suggest_int: Optuna refuses a suggest of another kind of distribution
    x = {"type": "float", "low": 0, "high": 1}
    study = {"objective": "sf_objectives:suggests_declared_differently", "sampler": {"name": "random", "seed": 0},
             "budget": {"n_trials": 4}}
    with pytest.raises(StudyAbortedError, match="the first 10 trials all failed"):
        optimize(None, {**study, "name": "kinds", "search_space": {"x": x, "n": x}},
                 client=client4, results_dir=tmp_path, progress=False)
    journal = next((tmp_path / ".store" / "journals").glob("kinds-*.log"))
    trials = optuna.load_study(study_name="kinds", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    failed = [t for t in trials if not t.system_attrs.get(NOT_RUN_ATTR)]  # not those held when it stopped
    assert len(failed) >= 10 and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.system_attrs[ERROR_ATTR].startswith("ValueError: suggest_int('n') cannot return")
               and "search_space.n" in t.system_attrs[ERROR_ATTR] for t in failed)
    # a range of its own, or whole numbers listed as choices (as a grid lists its values): the file's
    whole = {"type": "categorical", "choices": [2.0, 4.0]}
    ranges = optimize(None, {**study, "name": "ranges", "search_space": {"x": x, "n": whole}},
                      client=client4, results_dir=tmp_path, progress=False).trials
    assert (ranges["state"] == "COMPLETE").all() and ranges["params_x"].between(0, 1).all()
    assert set(ranges["value"] - ranges["params_x"]) <= {2.0, 4.0}


def test_mlflow_track_in_mlflow_and_its_callback_log_each_trial_into_one_run(tmp_path, monkeypatch):
    """An ML engineer's MLflow set-up as Optuna documents it (tests/sf_mlflow.py): every trial
    is one MLflow run holding what the objective logged and the value and parameters the
    driver's callback logged (as with `study.optimize(objective, callbacks=[mlflc])`)."""
    import mlflow
    import sf_mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store, no database
    # the experiment first: workers that each find it missing would each create one of that name
    # (the file store does not make them one), and the callback would log into the other
    mlflow.set_experiment("tracked")
    study = {"name": "tracked", "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 6}}
    result = optimize(sf_mlflow.objective, study, n_workers=2, results_dir=tmp_path, progress=False,
                      callbacks=[sf_mlflow.mlflc])
    assert list(result.trials["state"]) == ["COMPLETE"] * 6
    runs = mlflow.search_runs(experiment_names=["tracked"])
    assert len(runs) == 6
    assert sorted(runs["tags.number"].astype(int)) == list(range(6))
    for _, run in runs.iterrows():
        assert run["metrics.x_seen"] == pytest.approx(float(run["params.x"]))
        assert run["metrics.loss"] == pytest.approx((run["metrics.x_seen"] - 2) ** 2)


def test_a_lightning_objective_with_optunas_pruning_callback_and_check_pruned_runs_unchanged(client4, tmp_path):
    """An ML engineer's PyTorch Lightning objective (tests/sf_lightning.py): the pruning
    callback reports each epoch and prunes through the server's median pruner, and
    `check_pruned()`, which reads `trial.study._storage`, is the no-op it is outside DDP."""
    study = {"objective": "sf_lightning:objective", "name": "lightning", "sampler": {"name": "tpe", "seed": 0},
             "pruner": {"name": "median", "options": {"n_startup_trials": 2}}, "budget": {"n_trials": 8}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    # which trials the pruner stops depends on the order 4 workers finish them in: none fails
    assert set(result.trials["state"]) <= {"COMPLETE", "PRUNED"}, result.trials["error"].dropna().tolist()
    for trial in result.study.trials:  # the journal: an intermediate value per validation epoch
        assert 1 <= len(trial.intermediate_values) <= 6
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(trial.intermediate_values[5])
