"""What the study server's handlers send back that takes building: the closed study's trials
table, the trials finished since a poll, a define-by-run parameter's value, and what
`trial.study` reads; each pickled where it holds trials (`_plugin` calls them under the study's
lock, on or off the event loop)."""

from __future__ import annotations

import pickle
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from studyflow import outputs
from studyflow.server._lifecycle import ClosedStudy
from studyflow.server._study import ServedStudy

# What `trial.study` on a worker may read (`worker._study_view.StudyView`); "summary": what never changes
STUDY_VIEW_ATTRS = ("summary", "best_trial", "best_trials", "best_value", "best_params",
                    "user_attrs", "trials")
FINISHED_INLINE = 64  # finished trials pickled on the event loop for the driver's callbacks


def final_tables(served: ServedStudy, closed: ClosedStudy) -> bytes:
    """The closed study's trials table and best, pickled for its driver. A table pickles as a
    few arrays; the trials themselves would be thousands of objects to pickle here and unpickle
    in the driver."""
    table = outputs.trials_table(closed.trials, served.config.value_columns, served.store)
    return pickle.dumps(outputs.FinalTables(table, closed.best), protocol=5)


def pickled_finished(served: ServedStudy, since: int) -> dict[str, Any]:
    reply = served.finished_since(since)
    return reply | {"trials": pickle.dumps(reply["trials"], protocol=5)}


def suggested_value(served: ServedStudy, number: int, method: str, name: str,
                    kwargs: dict[str, Any], before: list[list[Any]]) -> dict[str, Any]:
    """A define-by-run parameter's value, with the distribution the server's trial keeps for
    it (Optuna's JSON), for `trial.distributions` on the worker; `before`: the suggests the
    loop answered from the lease's relative parameters since, recorded first (call order)."""
    served.replay_suggested(served.leases[number].trial, before)
    value = served.suggest(number, method, name, kwargs)
    distribution = served.leases[number].trial.distributions[name]
    return {"value": value, "distribution": distribution_to_json(distribution)}


def study_view_of(study: optuna.Study, attr: str, states: list[str] | None) -> bytes:
    """What `trial.study.<attr>` reads, pickled (trials are FrozenTrials). Optuna's own
    errors (no trial complete yet, a multi-objective study's best_trial) go to the worker."""
    if attr == "summary":
        value: Any = {"study_name": study.study_name, "metric_names": study.metric_names,
                      "directions": [d.name for d in study.directions]}
    elif attr == "trials":
        wanted = None if states is None else tuple(TrialState[s] for s in states)
        value = study.get_trials(deepcopy=False, states=wanted)
    else:
        value = getattr(study, attr)
    return pickle.dumps(value, protocol=5)
