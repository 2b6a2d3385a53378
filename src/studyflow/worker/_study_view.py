"""What a trial on a worker offers in place of Optuna's study and storage: `trial.study`, a
read-only view of the study the server holds, and `trial.storage`, which records what Optuna's
helpers write to the trial for the tell."""

from __future__ import annotations

import pickle
from collections.abc import Container
from typing import TYPE_CHECKING
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow.errors import ReadOnlyStudyError

if TYPE_CHECKING:
    from studyflow.worker._trial import RemoteTrial
    from studyflow.worker._trial import ServerConnection

_STUDY_HINTS = {
    "set_user_attr": "record per-trial facts with trial.set_user_attr",
    "enqueue_trial": "enqueue trials from the driver (optuna.load_study on the journal "
                     "between runs), not from an objective",
}
_MUTATING = ("optimize", "ask", "tell", "enqueue_trial", "add_trial", "add_trials",
             "set_user_attr", "set_system_attr", "set_metric_names")


class _NoStorage:
    """`trial.study._storage` on a worker. Optuna's integrations check its type: PyTorch
    Lightning's pruning callback, whose `check_pruned()` does nothing unless it is a cached
    RDB storage (DDP). Any use of it says that the server holds the study."""

    _owner = "trial.study on a worker"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"studyflow: {self._owner} has no Optuna storage ({name!r}): the study server "
            "holds the study; use the trial's own methods, or trial.study to read the study")


class StudyView:
    """`trial.study` on a worker: a read-only view of the study the server holds.

    Every read asks the server (under the study's lock), so it sees the study as it is then;
    what never changes (name, directions, metric names) is asked once per trial loop. A call
    that would change the study raises `ReadOnlyStudyError`: only the server changes it;
    `stop()` asks the server to stop it, as Optuna's does.
    """

    _storage = _NoStorage()  # for integrations that check its type

    def __init__(self, conn: ServerConnection) -> None:
        self._conn = conn
        self._summary: dict[str, Any] | None = None

    def _fetch(self, attr: str, **kwargs: Any) -> Any:
        return pickle.loads(self._conn.call("study_view", attr=attr, **kwargs)["value"])

    def _static(self, name: str) -> Any:
        if self._summary is None:
            self._summary = self._fetch("summary")
        return self._summary[name]

    @property
    def study_name(self) -> str:
        return self._static("study_name")

    @property
    def directions(self) -> list[StudyDirection]:
        return [StudyDirection[d] for d in self._static("directions")]

    @property
    def direction(self) -> StudyDirection:
        directions = self.directions
        if len(directions) > 1:
            raise RuntimeError(
                "A single direction cannot be retrieved from a multi-objective study. Consider "
                "using Study.directions to retrieve a list containing all directions.")
        return directions[0]

    @property
    def metric_names(self) -> list[str] | None:
        return self._static("metric_names")

    def _is_multi_objective(self) -> bool:  # what Optuna's integrations ask a study
        return len(self._static("directions")) > 1

    @property
    def best_trial(self) -> FrozenTrial:
        return self._fetch("best_trial")

    @property
    def best_trials(self) -> list[FrozenTrial]:
        return self._fetch("best_trials")

    @property
    def best_value(self) -> float:
        return self._fetch("best_value")

    @property
    def best_params(self) -> dict[str, Any]:
        return self._fetch("best_params")

    @property
    def user_attrs(self) -> dict[str, Any]:
        return self._fetch("user_attrs")

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        """As `optuna.Study.get_trials` (each call fetches them; `deepcopy` is moot here)."""
        names = None if states is None else [s.name for s in TrialState if s in states]
        return self._fetch("trials", states=names)

    def stop(self) -> None:
        """As Optuna's `Study.stop()` from an objective: no new trial starts; the running ones
        (this one too) finish, then the study ends (stop reason `study.stop()`)."""
        self._conn.call("stop")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _MUTATING:
            return _refuse(name)
        raise AttributeError(
            f"studyflow: trial.study on a worker is a read-only view of the study; it has no "
            f"{name!r} (it offers study_name, directions, direction, metric_names, best_trial, "
            "best_trials, best_value, best_params, user_attrs, trials, get_trials, stop)")


def _refuse(name: str) -> Any:
    """A stand-in for a study method that would change the study: calling it says why not."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        hint = _STUDY_HINTS.get(name, "the driver and the study file decide what the study runs")
        raise ReadOnlyStudyError(
            f"studyflow: trial.study.{name}() would change the study, but on a worker trial.study "
            f"is a read-only view (the study server alone changes the study); {hint}")

    return refuse


class WorkerTrialStorage(_NoStorage):
    """`trial.storage` on a worker: records the system attributes Optuna's helpers write to the
    trial (`optuna.artifacts.upload_artifact` writes the file to its artifact store first, then
    its record here), which the server sets on its trial before the tell; anything else it is
    asked says that the server holds the study (`_NoStorage`)."""

    _owner = "a trial on a worker"

    def __init__(self, trial: RemoteTrial) -> None:
        self._trial = trial

    def set_trial_system_attr(self, trial_id: int | None, key: str, value: Any) -> None:
        self._trial._set_system_attr(key, value)

    def get_trial_system_attrs(self, trial_id: int | None) -> dict[str, Any]:
        return self._trial.recorded_system_attrs
