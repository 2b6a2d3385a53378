"""Hooks of `studyflow.optimize` from Python: Optuna-style `callbacks` and a `progress_callback`.

Both run in the driver process, from its status loop. `callbacks` are called as
`cb(study, frozen_trial)` once per finished trial (COMPLETE, PRUNED or FAIL; never for a trial
that was not run), in the order the trials finished, as `optuna.Study.optimize` calls them.
Only for a driver with callbacks does the server log the finish order; the driver fetches the
trials finished since its last poll (`studyflow_finished`), and those finished between its last
poll and the close with the close's reply, so each gets its call exactly once.

`study` is an `optuna.Study` over an in-memory storage mirroring the served study: every
trial finished so far (this run's, a resumed run's, `warm_start`'s) under its own number; a
number not finished yet shows as RUNNING. It is for reading: changes to it are not saved,
except `study.stop()` (Optuna's `MaxTrialsCallback` calls it), which stops the served study
as Optuna's stops `optimize`: no new trial starts, the running ones finish.
An exception in a callback stops the study and propagates, as it does out of Optuna's.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import optuna
from distributed import Client
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial

from studyflow._compat import allow_stop
from studyflow._compat import stop_called
from studyflow.config import StudyConfig

_logger = logging.getLogger(__name__)

Callback = Callable[[optuna.Study, FrozenTrial], None]
ProgressCallback = Callable[[int, int], None]


def check_hooks(
    callbacks: Sequence[Callback] | None, progress_callback: ProgressCallback | None
) -> None:
    """Fail before any cluster starts, not at the first finished trial."""
    if isinstance(callbacks, str) or not isinstance(callbacks, (Sequence, type(None))):
        raise TypeError(
            f"callbacks must be a list of callables cb(study, frozen_trial), got {callbacks!r}")
    for cb in callbacks or ():
        if not callable(cb):
            raise TypeError(f"callbacks: {cb!r} is not callable")
    if progress_callback is not None and not callable(progress_callback):
        raise TypeError(f"progress_callback: {progress_callback!r} is not callable")


class MirrorStudy:
    """An in-memory `optuna.Study` holding the served study's finished trials, numbered as there.

    A trial that finishes after higher numbers have arrived fills the RUNNING placeholder its
    number got meanwhile, through the storage's public setters.
    """

    def __init__(self, cfg: StudyConfig) -> None:
        self.storage = InMemoryStorage()
        self.study = optuna.create_study(storage=self.storage, study_name=cfg.name,
                                         directions=cfg.study_directions)
        self.study_id = self.storage.get_study_id_from_name(self.study.study_name)
        self.n_trials = 0  # trials and placeholders, numbered 0..n_trials-1

    def add(self, trial: FrozenTrial) -> None:
        while self.n_trials < trial.number:
            self.storage.create_new_trial(self.study_id)  # RUNNING until its number finishes
            self.n_trials += 1
        if trial.number == self.n_trials:
            self.storage.create_new_trial(self.study_id, template_trial=trial)
            self.n_trials += 1
        else:
            self._fill(trial)

    def _fill(self, trial: FrozenTrial) -> None:
        storage = self.storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        if storage.get_trial(trial_id).state.is_finished():
            return  # already mirrored
        for name, value in trial.params.items():
            dist = trial.distributions[name]
            storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
        for key, value in trial.user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in trial.system_attrs.items():
            storage.set_trial_system_attr(trial_id, key, value)
        for step, value in trial.intermediate_values.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        storage.set_trial_state_values(trial_id, trial.state, trial.values)


class Hooks:
    """The driver's side of `callbacks` and `progress_callback` for one run of a study."""

    def __init__(self, cfg: StudyConfig, callbacks: Sequence[Callback] | None,
                 progress_callback: ProgressCallback | None) -> None:
        check_hooks(callbacks, progress_callback)
        self.cfg = cfg
        self.callbacks = list(callbacks or ())
        self.progress_callback = progress_callback
        self.mirror: MirrorStudy | None = None
        self.cursor = 0  # position in the server's finish order
        self.done = 0  # COMPLETE + PRUNED reported to progress_callback
        self.total: int | None = 0

    @property
    def track_finished(self) -> bool:
        """Whether the server must log the finish order (only callbacks need it)."""
        return bool(self.callbacks)

    def start(self, client: Client, study_id: str, opened: dict[str, Any]) -> None:
        """Right after the open: counts done so far (a resumed study's) are not reported again;
        the mirror gets the history, with no calls."""
        self.done, self.total = opened["complete"] + opened["pruned"], opened["n_trials"]
        if self.callbacks:
            self.mirror = MirrorStudy(self.cfg)
            self._poll(client, study_id)

    def on_status(self, client: Client, study_id: str, status: dict[str, Any]) -> None:
        """After each status poll: callbacks for newly finished trials, then progress."""
        if self.callbacks:
            self._poll(client, study_id)
        if self.progress_callback is not None:
            done = status["complete"] + status["pruned"]
            done = done if self.total is None else min(done, self.total)  # total None: n_trials: null
            for n in range(self.done + 1, done + 1):
                self.done = n
                what = f"progress_callback({n}, {self.total})"
                _noted(self.progress_callback, (n, self.total), what, self.cfg.name)

    def close_args(self) -> dict[str, Any]:
        """What `studyflow_close` needs to send back the trials finished after the last poll."""
        return {"finished_since": self.cursor} if self.callbacks else {}

    def on_close(self, reply: dict[str, Any]) -> None:
        """The calls for trials finished between the last poll and the close."""
        if not self.callbacks:
            return
        if "finished" not in reply:  # the scheduler lost the study (restarted?)
            _logger.warning("study %s: the scheduler lost the study; callbacks were called for "
                            "the first %d finished trials only", self.cfg.name, self.cursor)
            return
        self._feed(reply["finished"])

    def _poll(self, client: Client, study_id: str) -> None:
        if self._feed(client.sync(client.scheduler.studyflow_finished, study_id=study_id, since=self.cursor)):
            client.sync(client.scheduler.studyflow_stop, study_id=study_id)

    def _feed(self, reply: dict[str, Any]) -> bool:
        """Call the callbacks for the trials in `reply`; whether one called `study.stop()`."""
        assert self.mirror is not None
        study, stop = self.mirror.study, False
        allow_stop(study)
        trials: list[FrozenTrial] = pickle.loads(reply["trials"])
        for i, trial in enumerate(trials):
            self.mirror.add(trial)
            self.cursor += 1
            if i < reply["history"]:
                continue  # finished before this run
            for cb in self.callbacks:
                what = f"callback {_name(cb)} on trial {trial.number}"
                _noted(cb, (study, trial), what, self.cfg.name)
                stop |= stop_called(study)
        return stop


def _noted(fn: Callable[..., Any], args: tuple[Any, ...], what: str, study: str) -> None:
    """Call a hook; its exception propagates unchanged, with a note saying where it came from."""
    try:
        fn(*args)
    except Exception as exc:
        exc.add_note(f"studyflow: raised by {what} of study {study}; the study was stopped")
        raise


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__
