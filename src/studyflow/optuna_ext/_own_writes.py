"""A journal storage that applies its own writes instead of replaying them.

Optuna's `JournalStorage` writes each change as a record, then replays the record to change
its trials: it parses the datetimes and distributions back from their JSON form and copies
the trial, to reach what it had in hand. The study server is its journal's only writer, and
makes three to five such writes for every trial. Here the writes on that path (a new trial, a
define-by-run parameter, a system or user attribute, a finished state) build the same record,
write it, count it as read, and make the change from the objects in hand. Invariant: the
replayed state is what replaying the record would leave (tests compare it with a fresh
`JournalStorage` reading the same file), and the file holds the records Optuna would write,
field for field. A write that Optuna's replay would refuse (an unknown trial, a finished one,
a parameter whose distribution the first earlier trial with its name contradicts) raises the
same error before anything is written (Optuna writes a refused parameter's record, then
raises); every other write (taking a WAITING trial, an intermediate value, study records) is
Optuna's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime
from datetime import timezone
from typing import TYPE_CHECKING
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.distributions import check_distribution_compatibility
from optuna.distributions import distribution_to_json
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._compat import JOURNAL_NOT_FOUND_MSG
from studyflow._compat import JOURNAL_UNUPDATABLE_MSG
from studyflow._compat import JournalOperation

if TYPE_CHECKING:
    from studyflow.optuna_ext._journal import SingleWriterJournal

_DISTRIBUTION_JSON_KEPT = 1024  # distributions whose JSON is remembered (a fixed space reuses its own)


def _copied(trial: FrozenTrial) -> FrozenTrial:
    """A shallow copy, as `copy.copy` makes it (the replay copies a trial before changing it:
    lists handed out earlier keep the trial as it was), without its generic protocol."""
    new = FrozenTrial.__new__(FrozenTrial)
    new.__dict__.update(trial.__dict__)
    return new


def _stamped(moment: datetime) -> tuple[str, datetime]:
    """A datetime as the record holds it (UTC, ISO, to the microsecond) and as the replay reads
    that back (local time, naive: its POSIX time, exact to well under a microsecond as a float,
    read back as local time rounds to the same microsecond)."""
    utc = moment if moment.tzinfo is timezone.utc else moment.astimezone(timezone.utc)
    return utc.isoformat(timespec="microseconds"), datetime.fromtimestamp(utc.timestamp())


def _stamped_now() -> tuple[str, datetime]:
    """Now, as `_stamped` gives it, from one clock reading: both datetimes round it alike, so
    no conversion between time zones is needed (three of them per trial, otherwise)."""
    moment = time.time()
    return (datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="microseconds"),
            datetime.fromtimestamp(moment))


class OwnWritesJournalStorage(JournalStorage):
    """`JournalStorage` over a `SingleWriterJournal`, applying its hot writes itself."""

    def __init__(self, backend: SingleWriterJournal) -> None:
        super().__init__(backend)
        self._writer = backend
        self._distribution_json: dict[int, tuple[BaseDistribution, str]] = {}  # id -> (it, its JSON)
        self._moment: tuple[str, datetime] | None = None  # `one_moment`'s, while it holds

    @contextmanager
    def one_moment(self) -> Iterator[None]:
        """Stamp every trial started or finished meanwhile with the time this began: the
        server holds one for each batch of exchanges, whose outcomes it heard of at once and
        whose trials it leases at once (else two clock readings and time zone conversions a
        trial, a measurable share of the server's time per trial)."""
        self._moment = _stamped_now()
        try:
            yield
        finally:
            self._moment = None

    def _now(self) -> tuple[str, datetime]:
        return self._moment or _stamped_now()

    # --- the writes on every trial's path ---

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        template = template_trial
        if template is None:
            text, start = self._now()
            return self._append_trial(study_id, {"study_id": study_id, "datetime_start": text}, lambda number, trial_id:
                                      FrozenTrial(number=number, state=TrialState.RUNNING, value=None,
                                                  datetime_start=start, datetime_complete=None, params={},
                                                  distributions={}, user_attrs={}, system_attrs={},
                                                  intermediate_values={}, trial_id=trial_id))
        # the fields, in the order, `JournalStorage.create_new_trial` writes
        log: dict[str, Any] = {"study_id": study_id, "datetime_start": None, "state": template.state}
        if template.values is not None and len(template.values) > 1:
            log["value"], log["values"] = None, template.values
        else:
            log["value"], log["values"] = template.value, None
        start = complete = None
        if template.datetime_start is not None:
            log["datetime_start"], start = _stamped(template.datetime_start)
        if template.datetime_complete:
            log["datetime_complete"], complete = _stamped(template.datetime_complete)
        distributions = template.distributions
        log["distributions"] = {k: self._json_of(d) for k, d in distributions.items()}
        log["params"] = internal = {k: distributions[k].to_internal_repr(p) for k, p in template.params.items()}
        log["user_attrs"] = template.user_attrs
        log["system_attrs"] = template.system_attrs
        log["intermediate_values"] = template.intermediate_values
        return self._append_trial(study_id, log, lambda number, trial_id: FrozenTrial(
            number=number, state=TrialState(template.state), value=log["value"], values=log["values"],
            datetime_start=start, datetime_complete=complete,
            params={k: distributions[k].to_external_repr(p) for k, p in internal.items()},
            distributions=dict(distributions), user_attrs=template.user_attrs, system_attrs=template.system_attrs,
            intermediate_values={int(k): v for k, v in template.intermediate_values.items()}, trial_id=trial_id))

    def create_running_trial(self, study_id: int, params: dict[str, Any], distributions: dict[str, BaseDistribution],
                             system_attrs: dict[str, Any]) -> int:
        """A new RUNNING trial, started now, with these parameters and system attributes: the
        record and the trial `create_new_trial` makes of such a template, without building the
        template and converting its start time (every trial of a random search, `RandomInOneRecord`)."""
        text, start = self._now()
        internal = {k: distributions[k].to_internal_repr(p) for k, p in params.items()}
        log = {"study_id": study_id, "datetime_start": text, "state": TrialState.RUNNING, "value": None,
               "values": None, "distributions": {k: self._json_of(d) for k, d in distributions.items()},
               "params": internal, "user_attrs": {}, "system_attrs": system_attrs, "intermediate_values": {}}
        return self._append_trial(study_id, log, lambda number, trial_id: FrozenTrial(
            number=number, state=TrialState.RUNNING, value=None, datetime_start=start, datetime_complete=None,
            params={k: distributions[k].to_external_repr(v) for k, v in internal.items()},
            distributions=dict(distributions), user_attrs={}, system_attrs=system_attrs, intermediate_values={},
            trial_id=trial_id))

    def _append_trial(self, study_id: int, log: dict[str, Any], build: Callable[[int, int], FrozenTrial]) -> int:
        """Write a new trial's record and add `build(number, trial_id)` to the replayed trials."""
        with self._thread_lock:
            self._sync_with_backend()
            replay = self._replay_result
            if study_id not in replay._studies:
                raise KeyError(JOURNAL_NOT_FOUND_MSG)
            self._write_applied(JournalOperation.CREATE_TRIAL, log)
            trial_id = len(replay._trials)
            numbers = replay._study_id_to_trial_ids[study_id]
            trial = build(len(numbers), trial_id)
            replay._trials[trial_id] = trial
            numbers.append(trial_id)
            replay._trial_id_to_study_id[trial_id] = study_id
            replay._last_created_trial_id_by_this_process = trial_id
            if trial.state == TrialState.RUNNING:
                replay._worker_id_to_owned_trial_id[replay.worker_id] = trial_id
            return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        """A define-by-run suggest: refused, as the replay refuses it, when the first earlier
        trial with this name has an incompatible distribution."""
        log = {"trial_id": trial_id, "param_name": param_name, "param_value_internal": param_value_internal,
               "distribution": self._json_of(distribution)}
        with self._thread_lock:
            trial = self._updatable(trial_id)
            replay = self._replay_result
            for earlier in replay._study_id_to_trial_ids[replay._trial_id_to_study_id[trial_id]]:
                distributions = replay._trials[earlier].distributions
                if param_name in distributions:
                    check_distribution_compatibility(distributions[param_name], distribution)
                    break
            self._write_applied(JournalOperation.SET_TRIAL_PARAM, log)
            trial.params = {**trial.params, param_name: distribution.to_external_repr(param_value_internal)}
            trial.distributions = {**trial.distributions, param_name: distribution}
            replay._trials[trial_id] = trial

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr(trial_id, JournalOperation.SET_TRIAL_SYSTEM_ATTR, "system_attr", key, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr(trial_id, JournalOperation.SET_TRIAL_USER_ATTR, "user_attr", key, value)

    def _set_attr(self, trial_id: int, op: JournalOperation, field: str, key: str, value: Any) -> None:
        """One attribute: the record's `field` ("system_attr", "user_attr") and the trial's
        `<field>s` dict, a new one with the key (lists handed out earlier keep the old)."""
        with self._thread_lock:
            trial = self._updatable(trial_id)
            self._write_applied(op, {"trial_id": trial_id, field: {key: value}})
            setattr(trial, f"{field}s", {**getattr(trial, f"{field}s"), key: value})
            self._replay_result._trials[trial_id] = trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state == TrialState.RUNNING:  # taking an enqueued trial: Optuna's checks, its own way
            return super().set_trial_state_values(trial_id, state, values)
        log: dict[str, Any] = {"trial_id": trial_id, "state": state, "values": values}
        finished = state.is_finished()
        if finished:
            log["datetime_complete"], complete = self._now()
        with self._thread_lock:
            trial = self._updatable(trial_id)
            self._write_applied(JournalOperation.SET_TRIAL_STATE_VALUES, log)
            if finished:
                trial.datetime_complete = complete
            trial.state = state
            if values is not None:
                trial.values = values
            self._replay_result._trials[trial_id] = trial
        return True

    # --- helpers ---

    def _updatable(self, trial_id: int) -> FrozenTrial:
        """A copy of the trial to change, after any records not applied yet; the replay's
        errors for a write it would refuse (nothing is written then)."""
        self._sync_with_backend()
        trial = self._replay_result._trials.get(trial_id)
        if trial is None:
            raise KeyError(JOURNAL_NOT_FOUND_MSG)
        if trial.state.is_finished():
            raise UpdateFinishedTrialError(JOURNAL_UNUPDATABLE_MSG.format(trial_number=trial.number))
        return _copied(trial)

    def _write_applied(self, op: JournalOperation, fields: dict[str, Any]) -> None:
        """Write a record as `JournalStorage._write_log` does and count it as read: the caller
        applies it. Under `_thread_lock`, after `_sync_with_backend`; if the write raises
        (a full disk, a value that is not JSON), nothing is applied."""
        replay = self._replay_result
        self._writer.append_applied({"op_code": op, "worker_id": replay.worker_id, **fields}, replay.log_number_read)
        replay.log_number_read += 1

    def _json_of(self, distribution: BaseDistribution) -> str:
        kept = self._distribution_json.get(id(distribution))
        if kept is not None and kept[0] is distribution:
            return kept[1]
        if len(self._distribution_json) >= _DISTRIBUTION_JSON_KEPT:
            self._distribution_json.clear()
        text = distribution_to_json(distribution)
        self._distribution_json[id(distribution)] = (distribution, text)
        return text
