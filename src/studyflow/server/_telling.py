"""How a served study takes outcomes: tells, failures, lost loops, retries.

Mixed into `ServedStudy` (its fields: `study`, `leases`, `same_key`, `ordering`, `budget`,
`store`, `finish_log`). Invariants: an outcome ends its lease first, and a late outcome for an
ended lease is dropped; only the loop holding a lease may end it (tell or drop); a COMPLETE result goes to the trial store under the trial's key
(define-by-run parameters join the key at the tell); trials that waited for the key share a
COMPLETE result, or run themselves if it failed; an infrastructure failure is retried with the
same parameters up to `budget.retries` times.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState

from studyflow._attrs import ATTEMPT_ATTR
from studyflow._attrs import CACHED_ATTR
from studyflow._attrs import DURATION_ATTR
from studyflow._attrs import ERROR_ATTR
from studyflow._attrs import INTERRUPTED_ERROR
from studyflow._attrs import KEY_ATTR
from studyflow._attrs import NOT_RUN_ATTR
from studyflow._attrs import NOT_RUN_ERROR
from studyflow._attrs import RETRY_OF_ATTR
from studyflow._attrs import WORKER_ATTR
from studyflow._compat import handed_relative
from studyflow._compat import storage_of
from studyflow._compat import trial_id_of
from studyflow._trail import read_trail
from studyflow._trail import trail_path
from studyflow.errors import JournalWriteError
from studyflow.protocol import INTERRUPTED
from studyflow.protocol import TrialOutcome
from studyflow.server._budget import STOP_CALLED
from studyflow.server._constraints import feasible
from studyflow.server._constraints import system_attrs_to_set
from studyflow.server._ordering import Outcome
from studyflow.server._ordering import apply
from studyflow.store import StoredResult
from studyflow.store import trial_key

_logger = logging.getLogger(__name__)


class Telling:
    """The telling half of `ServedStudy`."""

    def _tell_trial(self, outcome: TrialOutcome, worker: str, loop: str) -> dict[str, Any]:
        """Record a loop's outcome and receive it. `outcome.artifacts`: the objective asked for
        its artifact folder (else there is nothing to move or discard). `outcome.system_attrs`:
        the constraints and artifact records the objective set, set here before the tell (with
        the study file's `constraints.user_attr`), so the sampler sees them."""
        number, state, values, error = outcome.number, outcome.state, outcome.values, outcome.error
        user_attrs, duration_s, artifacts = outcome.user_attrs, outcome.duration_s, outcome.artifacts
        if not self._holds(loop, number, "the outcome of"):
            return {"status": "refused"}
        if state == INTERRUPTED:  # a Ctrl-C reached its worker mid-trial: re-run, as `close` does
            return self._interrupted(outcome)
        lease = self.leases.drop(number)
        if lease is None:  # already failed as lost or timed out; the late answer is dropped
            return {"status": "stale"}
        trial = lease.trial
        trial_id = trial_id_of(trial)
        storage = storage_of(self.study)
        attrs: dict[str, Any] = {}
        try:
            self.replay_suggested(trial, outcome.suggested)  # before the key is made of the params
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            attrs = system_attrs_to_set(self.config, outcome.system_attrs, user_attrs, state)
            for key, value in attrs.items():
                storage.set_trial_system_attr(trial_id, key, value)
            if worker != lease.journaled_worker:
                storage.set_trial_system_attr(trial_id, WORKER_ATTR, worker)
            if duration_s is not None:
                storage.set_trial_system_attr(trial_id, DURATION_ATTR, duration_s)
            if error:
                storage.set_trial_system_attr(trial_id, ERROR_ATTR, error)
        except JournalWriteError:
            raise  # the journal's disk, not the trial: the study stops (`_service`)
        except Exception as exc:  # e.g. a user attr that is not JSON: fail the trial, not the loop
            _logger.exception("study %s: could not record trial %d", self.config.name, number)
            state, values, error = "FAIL", None, f"RecordError: {type(exc).__name__}: {exc}"
            storage.set_trial_system_attr(trial_id, ERROR_ATTR, error)
        if state == "COMPLETE":
            params = storage.get_trial_params(trial_id)
            # define-by-run params join the key; else they are the asked ones, keyed at the ask
            key = trial_key(self.spec.key_base, params) if self.define_by_run else lease.key
            if key != lease.journaled_key:
                storage.set_trial_system_attr(trial_id, KEY_ATTR, key)
            self.store.put_later(StoredResult(key, state, values, dict(user_attrs), duration_s, params,
                                              self.config.name, number, attrs),
                                 number if artifacts else None, lease.key)
        elif artifacts:
            self.store.discard_staging(lease.key, number)
        self._receive(Outcome(trial, state, values, feasible=feasible(attrs)), error)
        for follower in self.same_key.release(lease.key):
            # trials that asked for this key while it ran share its result, or run it themselves
            if state == "COMPLETE":
                self._answer_from_store(follower, StoredResult(lease.key, state, values, dict(user_attrs),
                                                               system_attrs=dict(attrs)))
            else:
                self.same_key.ready.append(follower)
        self._apply_received()
        return {"status": "ok"}  # with the OS before the worker hears back; fsynced soon after

    def _interrupted(self, outcome: TrialOutcome) -> dict[str, Any]:
        lease = self.leases.get(outcome.number)
        if lease is None:
            return {"status": "stale"}
        self.replay_suggested(lease.trial, outcome.suggested)  # its retry runs with them
        self.fail_lease(outcome.number, INTERRUPTED_ERROR, True, interrupted=True)
        return {"status": "ok"}

    def _answer_from_store(self, trial: optuna.Trial, stored: StoredResult) -> None:
        for key, value in stored.user_attrs.items():
            trial.set_user_attr(key, value)
        storage = storage_of(self.study)
        try:
            attrs = system_attrs_to_set(self.config, stored.system_attrs, stored.user_attrs, "COMPLETE",
                                        from_store=True)
        except ValueError as exc:  # stored before the study file asked for constraints
            _logger.warning("study %s: trial %d answered from the store without constraints: %s",
                            self.config.name, trial.number, exc)
            attrs = {}
        for key, value in attrs.items():
            storage.set_trial_system_attr(trial_id_of(trial), key, value)
        storage.set_trial_system_attr(trial_id_of(trial), CACHED_ATTR, True)
        self.budget.n_cached += 1
        self._receive(Outcome(trial, "COMPLETE", stored.values, cached=True, feasible=feasible(attrs)), None)
        self._apply_received()  # async: the next ask sees it (reproducible: a no-op, see there)

    def fail_lease(self, number: int, error: str, retry: bool, interrupted: bool = False) -> None:
        """Mark a running trial FAIL and, for infrastructure errors, enqueue its retry (up to
        `budget.retries`); an `interrupted` trial (the run was stopped) is always re-run, and
        the interruption is not counted as an attempt."""
        lease = self.leases.drop(number)
        assert lease is not None
        storage = storage_of(self.study)
        trial_id = trial_id_of(lease.trial)
        storage.set_trial_system_attr(trial_id, WORKER_ATTR, lease.worker)
        storage.set_trial_system_attr(trial_id, ERROR_ATTR, error)
        self._record_handed(lease.trial)
        self.store.discard_staging(lease.key, number)
        if interrupted or (retry and lease.attempt < self.config.budget.retries):
            # with the values handed out for its define-by-run suggests, which the server's
            # trial has only once its outcome came back
            self.enqueue_retry({**handed_relative(lease.trial), **lease.trial.params}, number,
                               lease.attempt + (not interrupted))
        self._receive(Outcome(lease.trial, "FAIL", None), error)
        self.same_key.ready += self.same_key.release(lease.key)
        self._apply_received()
        self.backend.flush_to_disk()

    def _record_handed(self, trial: optuna.Trial) -> None:
        """A trial that ends without an outcome (its worker died, it timed out) keeps the
        values handed out for its define-by-run suggests as its parameters, as Optuna's trial
        keeps those suggested before a crash: the row showed none, and the user could not see
        which values killed the worker (its retry runs with them)."""
        space = trial.relative_search_space or {}
        storage = storage_of(self.study)
        for name, value in handed_relative(trial).items():
            if name in space and name not in trial.params:
                try:
                    storage.set_trial_param(trial_id_of(trial), name, space[name].to_internal_repr(value), space[name])
                except ValueError:  # unlike an earlier trial's distribution of the name: left out
                    pass

    def lose_leases(self, numbers: list[int], error: str) -> None:
        """Leases whose loop is gone (its worker died or was restarted). Where the loop left a
        trail (`_trail`), an outcome in it is told, the trial it began without one fails and is
        retried, and one it never began waits, as it is, for another loop. Without a trail, the
        trial the server last heard was running fails instead."""
        by_loop: dict[str, list[int]] = {}
        for number in numbers:
            by_loop.setdefault(self.leases[number].loop, []).append(number)
        for loop, lost in by_loop.items():
            trail = read_trail(trail_path(self.trails_dir, loop))
            began, outcomes = (set(trail[0]), trail[1]) if trail is not None else (None, [])
            kept = {o.number: o for o in map(TrialOutcome.from_wire, outcomes) if o.number in lost}
            for number in lost:
                lease = self.leases[number]
                never_began = lease.started is None if began is None else number not in began
                if number in kept:
                    self._tell_found(kept[number], lease.worker, loop)
                elif never_began:
                    self.leases.drop(number)
                    self.same_key.ready.append(lease.trial)
                else:
                    self.fail_lease(number, error, True)
            if kept:
                self.backend.flush_to_disk()
                _logger.info("study %s: the outcomes of trials %s came from lost loop %s's trail",
                             self.config.name, sorted(kept), loop)

    def _tell_found(self, outcome: TrialOutcome, worker: str, loop: str) -> None:
        """An outcome a lost loop's trail kept: told as if it had arrived."""
        if outcome.traceback:
            _logger.warning("study %s trial %d failed on %s:\n%s", self.config.name, outcome.number, worker,
                            outcome.traceback)
        self._tell_trial(outcome, worker, loop)

    def _holds(self, loop: str, number: int, what: str) -> bool:
        """Whether `loop` may end the lease of trial `number` (an ended one: nothing to end). A
        loop whose trials went to other loops (its worker was lost, it was released) may still
        send: it must not end a lease that is now another loop's."""
        lease = self.leases.get(number)
        if lease is None or lease.loop == loop:
            return True
        _logger.warning("study %s: refused %s trial %d from loop %s: it is leased to loop %s",
                        self.config.name, what, number, loop, lease.loop)
        return False

    def _release_unstarted(self, number: int, loop: str) -> None:
        """A loop told to stop drops the trials it held but never started."""
        if not self._holds(loop, number, "to drop"):
            return
        lease = self.leases.drop(number)
        if lease is None:
            return
        self.store.discard_staging(lease.key, number)
        self.discard(lease.trial)
        self.same_key.ready += self.same_key.release(lease.key)

    def requeue_retry(self, trial_id: int) -> None:
        """A retry that never began (held when its run stopped): enqueued again as it was, so
        its parameters still run."""
        attrs = storage_of(self.study).get_trial_system_attrs(trial_id)
        if RETRY_OF_ATTR in attrs:
            self.enqueue_retry(attrs["fixed_params"], attrs[RETRY_OF_ATTR], int(attrs.get(ATTEMPT_ATTR, 1)))

    def discard(self, trial: optuna.Trial) -> None:
        """A trial sampled but never run: FAIL, as Optuna cannot take back an ask."""
        self.mark_not_run(trial_id_of(trial))
        apply(self.study, Outcome(trial, "FAIL", None))

    def mark_not_run(self, trial_id: int) -> None:
        storage = storage_of(self.study)
        storage.set_trial_system_attr(trial_id, ERROR_ATTR, NOT_RUN_ERROR)
        storage.set_trial_system_attr(trial_id, NOT_RUN_ATTR, True)

    def enqueue_retry(self, params: dict[str, Any], number: int, attempt: int) -> None:
        self.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs={
                    "fixed_params": params,
                    RETRY_OF_ATTR: number,
                    ATTEMPT_ATTR: attempt,
                    KEY_ATTR: trial_key(self.spec.key_base, params),
                },
            )
        )

    def _receive(self, outcome: Outcome, error: str | None) -> None:
        self.ordering.receive(outcome)
        if self.finish_log is not None:
            self.finish_log.add(outcome.trial)
        self.budget.count(outcome.trial.number, outcome.state, outcome.values, error, outcome.feasible)

    def _apply_received(self) -> None:
        self.ordering.apply_received(self._in_flight_numbers)
        self._heed_stop_asked()

    def _heed_stop_asked(self) -> None:
        """A sampler's `study.stop()` in a tell stops the study (the grid's has its own reason)."""
        if self.ordering.take_stop_asked() and self.grid is None and self.budget.stop_reason is None:
            self.budget.stop_reason = STOP_CALLED
