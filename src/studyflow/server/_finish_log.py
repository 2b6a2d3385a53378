"""The order in which trials finished, kept only for a driver with callbacks.

Invariants: each finished trial appears once, in the order its outcome was received; the
first `n_history` entries finished before this run (resumed or warm-start trials: no calls).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._compat import storage_of
from studyflow._compat import trial_id_of
from studyflow.server._ordering import Outcome


@dataclass
class FinishLog:
    study: optuna.Study
    trial_ids: list[int] = field(default_factory=list)
    n_history: int = 0

    @classmethod
    def after_history(cls, study: optuna.Study) -> FinishLog:
        """A log whose history is every trial already finished."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        ids = [trial_id_of(t) for t in study.get_trials(deepcopy=False, states=states)]
        return cls(study, ids, len(ids))

    def add(self, trial: optuna.Trial) -> None:
        self.trial_ids.append(trial_id_of(trial))

    def since(self, since: int, received: dict[int, Outcome]) -> dict[str, Any]:
        """The trials finished from position `since` on: `trials`, the next position `cursor`,
        and `history`, how many of them finished before this run. An outcome the scheduling
        mode has not applied yet (in `received`) is shown as it will be applied, so each trial
        is sent once, finished."""
        trials = [self._finished(i, received) for i in self.trial_ids[since:]]
        return {"trials": trials, "cursor": since + len(trials), "history": max(0, self.n_history - since)}

    def _finished(self, trial_id: int, received: dict[int, Outcome]) -> FrozenTrial:
        trial = copy.copy(storage_of(self.study).get_trial(trial_id))
        outcome = received.get(trial.number)
        if outcome is not None and not trial.state.is_finished():
            trial.state = TrialState[outcome.state]
            trial.values = outcome.values if outcome.state == "COMPLETE" else None
            trial.datetime_complete = datetime.now()
        return trial
