"""Objectives as Optuna's own examples write them, for tests/test_trial_api.py.

The first four are plain Optuna objectives, unchanged from how they run under
`study.optimize` (modelled on Optuna's examples/sklearn, examples/pruning and the
constrained-optimization examples); `reports_its_api` records what the trial offers, for the
test to check. Importable on worker processes through PYTHONPATH (conftest.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import sklearn.datasets
import sklearn.ensemble
import sklearn.linear_model
import sklearn.model_selection
import sklearn.svm
from optuna.distributions import distribution_to_json


def sklearn_simple(trial):
    """Optuna's examples/sklearn: the model is a categorical choice, its hyperparameters exist
    only for that choice (log-scaled floats, stepped and log-scaled ints)."""
    iris = sklearn.datasets.load_iris()
    x, y = iris.data, iris.target

    classifier_name = trial.suggest_categorical("classifier", ["SVC", "RandomForest"])
    if classifier_name == "SVC":
        svc_c = trial.suggest_float("svc_c", 1e-10, 1e10, log=True)
        classifier_obj = sklearn.svm.SVC(C=svc_c, gamma="auto")
    else:
        rf_max_depth = trial.suggest_int("rf_max_depth", 2, 32, log=True)
        rf_n_estimators = trial.suggest_int("rf_n_estimators", 4, 12, step=4)
        classifier_obj = sklearn.ensemble.RandomForestClassifier(
            max_depth=rf_max_depth, n_estimators=rf_n_estimators, random_state=0
        )

    score = sklearn.model_selection.cross_val_score(classifier_obj, x, y, n_jobs=1, cv=3)
    accuracy = score.mean()
    return accuracy


def sgd_pruning(trial):
    """Optuna's examples/pruning/simple.py: report the validation error per epoch, stop when
    the pruner says so."""
    iris = sklearn.datasets.load_iris()
    classes = list(set(iris.target))
    train_x, valid_x, train_y, valid_y = sklearn.model_selection.train_test_split(
        iris.data, iris.target, test_size=0.25, random_state=0
    )

    alpha = trial.suggest_float("alpha", 1e-5, 1e-1, log=True)
    clf = sklearn.linear_model.SGDClassifier(alpha=alpha, random_state=0)

    for step in range(12):
        clf.partial_fit(train_x, train_y, classes=classes)

        # Report intermediate objective value.
        intermediate_value = 1.0 - clf.score(valid_x, valid_y)
        trial.report(intermediate_value, step)

        # Handle pruning based on the intermediate value.
        if trial.should_prune():
            raise optuna.TrialPruned()

    return 1.0 - clf.score(valid_x, valid_y)


def constrained_user_attr(trial):
    """Optuna's constraints_func example: the constraints are stored in a user attribute, which
    `constraints_func` (here the study file's `constraints: {user_attr: constraint}`) reads."""
    x = trial.suggest_float("x", -2, 10)
    y = trial.suggest_float("y", -2, 10)

    # Constraints which are considered feasible if less than or equal to zero.
    c0 = (x - 5) ** 2 + y**2 - 25
    c1 = -((x - 8) ** 2) - (y + 3) ** 2 + 7.7

    # Store the constraints as user attributes so that they can be restored after optimization.
    trial.set_user_attr("constraint", (c0, c1))

    return 4 * x**2 + 4 * y**2


def constraints(trial):
    """What an Optuna script passes as `TPESampler(constraints_func=constraints)`."""
    return trial.user_attrs["constraint"]


def constrained_set_constraint(trial):
    """The same problem with Optuna 5's `Trial.set_constraint`."""
    x = trial.suggest_float("x", -2, 10)
    y = trial.suggest_float("y", -2, 10)
    trial.set_constraint("c0", (x - 5) ** 2 + y**2 - 25)
    trial.set_constraint("c1", -((x - 8) ** 2) - (y + 3) ** 2 + 7.7)
    return 4 * x**2 + 4 * y**2


def _error(call):
    """The error `call()` raises, as 'TypeName: message' (None if it raises none)."""
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _study_facts(study):
    """What the objective sees of the study, as JSON: its best value may not exist yet."""
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return {
        "name": study.study_name,
        "directions": [d.name for d in study.directions],
        "direction": study.direction.name,
        "best_value": None if not complete else study.best_value,
        "best_number": None if not complete else study.best_trial.number,
        "best_params": None if not complete else study.best_params,
        "n_complete": len(complete),
        "n_trials": len(study.trials),
        "user_attrs": study.user_attrs,
    }


def reports_its_api(trial, artifact_base):
    """Uses each part of `optuna.Trial`'s API an objective may use and records what it saw."""
    x = trial.suggest_float("x", 0, 1)  # declared in the study file: arrives with the trial
    n = trial.suggest_int("n", 1, 9, step=2)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u = trial.suggest_uniform("u", 0, 1)
        lu = trial.suggest_loguniform("lu", 1e-3, 1)
        du = trial.suggest_discrete_uniform("du", 0, 1, 0.25)
    trial.set_user_attr("tag", "api")
    trial.set_constraint("c", -1.0)
    path = f"{artifact_base}/trial-{trial.number}.txt"
    with open(path, "w") as f:
        f.write(f"trial {trial.number}")
    store = optuna.artifacts.FileSystemArtifactStore(base_path=artifact_base)
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=path, study_or_trial=trial
    )
    study = trial.study
    trial.set_user_attr("seen", {
        "number": trial.number,
        "params": trial.params,
        "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
        "datetime_start": trial.datetime_start.isoformat(),
        "datetime_start_type": type(trial.datetime_start).__name__,
        "user_attrs": trial.user_attrs,
        "constraints": trial.constraints,
        "is_base_trial": isinstance(trial, optuna.trial.BaseTrial),
        "is_trial": isinstance(trial, optuna.Trial),
        "deprecations": sorted({str(w.message) for w in caught if w.category is FutureWarning}),
        "artifact_id": artifact_id,
        "study": _study_facts(study),
        "enqueue_error": _error(lambda: study.enqueue_trial({"x": 0.5})),
        "optimize_error": _error(lambda: study.optimize(reports_its_api, n_trials=1)),
        "set_user_attr_error": _error(lambda: study.set_user_attr("k", 1)),
        "system_attrs_error": _error(lambda: trial.system_attrs),
        "relative_params_error": _error(lambda: trial.relative_params),
    })
    return float(np.round(x + n / 10 + lr + (kind == "b") + u + lu + du, 12))
