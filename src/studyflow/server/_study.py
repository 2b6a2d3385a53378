"""One study as the server holds it: budget, leases, the trial store, and when tells apply.

Everything here is synchronous Optuna work; the plugin (`server.py`) calls it under the
study's lock, off the event loop unless the work is short (see `server.INLINE_S`).

Outcomes are *received* when a worker tells (or the store answers) and *applied* to the Optuna
study when the scheduling mode allows:

- `async`: at once, so each ask sees whatever has finished;
- `reproducible` with window c: in trial order, and the outcome of trial j only just before
  trial j + c is asked. Trial i is then sampled seeing exactly trials 0..i-c complete and
  i-c+1..i-1 running, whatever the worker count and timing, so a seed gives the same trials on
  1 or 8 workers. Until applied, an outcome's user attributes are already in the journal and
  a COMPLETE result is on its way to the trial store; a crash in between re-runs that trial.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import math
import numbers
import time
from datetime import datetime
from collections import Counter
from collections import deque
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._attrs import ATTEMPT_ATTR
from studyflow._attrs import CACHED_ATTR
from studyflow._attrs import CONSTRAINT_PREFIX
from studyflow._attrs import DURATION_ATTR
from studyflow._attrs import ERROR_ATTR
from studyflow._attrs import KEY_ATTR
from studyflow._attrs import NOT_RUN_ATTR
from studyflow._attrs import NOT_RUN_ERROR
from studyflow._attrs import RETRY_OF_ATTR
from studyflow._attrs import STARTED_ATTR
from studyflow._attrs import WARM_START_ATTR
from studyflow._attrs import WORKER_ATTR
from studyflow._attrs import WORKER_SYSTEM_ATTRS
from studyflow._compat import fresh_trials_view
from studyflow._compat import storage_of
from studyflow._compat import study_id_of
from studyflow._compat import tell
from studyflow._compat import trial_id_of
from studyflow.config import REPRODUCIBLE_ONLY
from studyflow.config import StudyConfig
from studyflow.optuna_ext import HISTORY_FREE_SAMPLERS
from studyflow.optuna_ext import RandomInOneRecord
from studyflow.optuna_ext import ServerJournalStorage
from studyflow.optuna_ext import SingleWriterJournal
from studyflow.optuna_ext import distributions
from studyflow.optuna_ext import grid_size
from studyflow.optuna_ext import make_pruner
from studyflow.optuna_ext import make_sampler
from studyflow.store import StoredResult
from studyflow.store import TrialStore
from studyflow.store import trial_key
from studyflow.store import trial_seed


_logger = logging.getLogger(__name__)

# A stop reason that is the study file's fault: the driver raises it as a ConfigError.
INVALID_STUDY = "invalid study: "
# Failures caused by the infrastructure, not the objective: retried, and not counted against
# `budget.max_failures`.
INFRA_ERRORS = ("WorkerLost", "Interrupted")
# `prefetch: auto` lets a loop hold this many trials beyond the one it runs when the sampler
# ignores history (random, grid, qmc): short trials then cost one round trip per batch.
MAX_FILL_PREFETCH = 64


@dataclass
class StudySpec:
    """What the driver sends to open a study on the server."""

    study_id: str
    config: StudyConfig
    journal_path: str
    store_root: str
    key_base: str  # objective identity + code version + data sha256 + objective_args
    concurrency: int
    loops: int = 0  # trial loops the driver runs (0: as many as `concurrency`)
    warm_trials: list[FrozenTrial] = field(default_factory=list)  # `warm_start`, marked
    track_finished: bool = False  # the driver has callbacks: log the finish order


@dataclass
class _Lease:
    trial: optuna.Trial
    key: str
    worker: str
    attempt: int
    loop: str = ""
    started: float | None = None  # when its loop began it, as far as the server knows


def prefetch_policy(cfg: StudyConfig) -> dict[str, Any]:
    """How many trials a loop may hold beyond the one it runs, and how it picks within that.

    - `fill` (auto, samplers that ignore history): enough to cover a round trip, up to 64;
    - `adaptive` (auto, samplers that learn from history): one, and only while the round trip
      is 5% to 4x a trial (waiting would cost at least ~5% of the loop's time), so sampling
      hides behind a running trial without feeding the sampler trials sampled blind where
      that buys little; where trials are shorter than a quarter of a round trip, the server
      samples the loop's next trial while its reply travels instead (`ask_ahead`);
    - `fixed`: exactly `prefetch` (the study file's value; 0 turns prefetching off), and 0
      under `scheduling: reproducible` unless the study file sets it.
    """
    if cfg.prefetch is not None:
        return {"mode": "fixed", "cap": cfg.prefetch}
    if cfg.scheduling == "reproducible":
        # The window lets at most c trials be in flight: a held one would only take the slot
        # of an idle loop and make the window wait behind a running trial.
        return {"mode": "fixed", "cap": 0}
    if cfg.sampler.name in HISTORY_FREE_SAMPLERS:
        return {"mode": "fill", "cap": MAX_FILL_PREFETCH}
    return {"mode": "adaptive", "cap": 1}


@dataclass
class _Outcome:
    trial: optuna.Trial
    state: str
    values: list[float] | None
    cached: bool = False
    feasible: bool = True  # every constraint <= 0 (or none): it may be the best

@dataclass
class ServedStudy:
    spec: StudySpec
    study: optuna.Study
    backend: SingleWriterJournal
    store: TrialStore
    n_trials: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # the service task has work
    requests: list[Any] = field(default_factory=list)  # exchanges not yet served (server.py)
    service: Any = None  # the plugin's service task
    seconds_per_item: float = 0.0  # serving time per outcome or wanted trial (see `note_served`)
    leases: dict[int, _Lease] = field(default_factory=dict)  # {trial number: lease}
    leased_keys: Counter[str] = field(default_factory=Counter)  # leases per key, kept with `leases`
    loop_queues: dict[str, deque[int]] = field(default_factory=dict)  # {loop: numbers, in order}
    ahead: dict[str, dict[str, Any]] = field(default_factory=dict)  # {loop: its trial leased, not yet sent}
    followers: dict[str, list[optuna.Trial]] = field(default_factory=dict)  # {key: trials}
    ready: list[optuna.Trial] = field(default_factory=list)  # followers whose leader failed
    received: dict[int, _Outcome] = field(default_factory=dict)  # {number: not yet applied}
    n_complete: int = 0
    n_pruned: int = 0
    n_fail: int = 0
    n_cached: int = 0
    n_objective_fail: int = 0
    n_objective_fail_first10: int = 0
    n_resumed: int = 0
    best_value: float | None = None
    best_number: int | None = None
    since_improvement: int = 0
    stop_reason: str | None = None
    opened: float = field(default_factory=time.monotonic)
    recent_errors: list[str] = field(default_factory=list)
    finished_log: list[int] | None = None  # trial ids in finish order, when the driver asks
    n_history: int = 0  # of which finished before this run (resumed, warm start): no callbacks

    def __post_init__(self) -> None:
        self.space = distributions(self.config)
        # Only when every parameter comes from the study file's space does the ask know the
        # trial's key; once the objective suggests a name of its own, the key is known at the
        # tell, and trials are stored but not answered from the store at the ask.
        self.define_by_run = not self.space
        # random search: trials drawn and journaled in one step each (random_ask.py)
        self.one_record = RandomInOneRecord(self.study, self.space) if RandomInOneRecord.applies(
            self.study, self.space) else None
        self.window = self.spec.concurrency if self.config.scheduling == "reproducible" else 0
        self.policy = prefetch_policy(self.config)
        self.loops = self.spec.loops or self.spec.concurrency

    @property
    def config(self) -> StudyConfig:
        return self.spec.config

    @property
    def finished(self) -> int:
        return self.n_complete + self.n_pruned

    @property
    def running(self) -> int:
        return sum(lease.started is not None for lease in self.leases.values())

    @property
    def in_flight(self) -> int:
        return len(self.leases) + sum(map(len, self.followers.values())) + len(self.ready)

    def notify(self) -> None:
        """Wake the service task (a finished trial may free budget for a waiting loop) and,
        once the study may be done, the driver's status poll: it answers early only then, and
        waking it on every batch put a pass of it on the path of every trial."""
        self.wakeup.set()
        if self.stop_reason is not None or self.finished >= self.n_trials:
            self.changed.set()
            self.changed = asyncio.Event()

    # --- deciding ---

    def decide(self) -> str:
        """'run', 'wait' or 'stop' for a loop asking for a trial."""
        budget = self.config.budget
        if self.stop_reason is None:
            if self.finished >= self.n_trials:
                self.stop_reason = "n_trials"
            elif budget.timeout_s is not None and time.monotonic() - self.opened > budget.timeout_s:
                self.stop_reason = "timeout_s"
        if self.stop_reason is not None:
            return "stop"
        if self.finished + self.in_flight >= self.n_trials and not self.ready:
            return "wait"  # (a ready trial is already counted in flight: it may be leased)
        if len(self.leases) >= self.spec.concurrency * (1 + self.policy["cap"]):
            return "wait"
        if self.window and self._blocked_by_window():
            return "wait"
        if budget.patience is not None and self.in_flight >= max(self.loops, budget.patience - self.since_improvement):
            return "wait"  # more could not finish before patience ends the study
        return "run"

    def _in_flight_numbers(self) -> list[int]:
        numbers = list(self.leases)
        numbers += [t.number for ts in self.followers.values() for t in ts]
        return numbers + [t.number for t in self.ready]

    def _next_number(self) -> int:
        waiting = self._waiting()
        if waiting:
            return min(t.number for t in waiting)
        return storage_of(self.study).get_n_trials(study_id_of(self.study))

    def _blocked_by_window(self) -> bool:
        """Reproducible mode: trial i waits until every trial up to i - c has finished."""
        horizon = self._next_number() - self.window
        return any(n <= horizon for n in self._in_flight_numbers())

    def note_served(self, seconds: float, items: int) -> None:
        """Learn what a batch costs per item, so the plugin knows which batches to offload: a
        slower one (a sampler whose asks grow with the history) is believed at once, a faster
        one halves the gap (the sampler's first, cold ask is forgotten within a few batches)."""
        per_item = seconds / items
        self.seconds_per_item = max(per_item, self.seconds_per_item + 0.5 * (per_item - self.seconds_per_item))

    # --- asking ---

    def serve(self, requests: list[tuple[str, str, list[dict[str, Any]], int, list[int], int | None]],
              durable: bool = False) -> list[dict[str, Any] | None]:
        """Serve a batch of loop requests `(loop, worker, outcomes, want, dropped, running)`:
        every outcome is told first, then each loop gets up to `want` trials. All asks of a
        batch see the same history, so a sampler that caches its model fits it once per batch.
        Returns one reply per request (None: the loop wants a trial and none can be leased
        yet; the caller waits for a change). Every record is with the OS before it returns;
        when `durable`, another thread fsyncs the batch's tells within 50 ms (`sync_soon`).
        """
        try:
            for loop, worker, outcomes, _, dropped, running in requests:
                for o in outcomes:
                    self._tell_trial(o["number"], o["state"], o["values"], o.get("user_attrs") or {},
                                     o.get("error"), worker, o.get("duration_s"),
                                     o.get("artifacts", True), o.get("system_attrs") or {})
                for number in dropped:
                    self._release_unstarted(number)
                lease = self.leases.get(running) if running is not None else None
                if lease is not None and lease.loop == loop and lease.started is None:
                    self._mark_started(lease)  # the loop says it runs it (its timeout clock starts)
            self.store.write_pending()  # results first: a resume completes a told trial from them
            if durable:
                self.backend.sync_soon()
            return [self._lease_batch(loop, worker, want) for loop, worker, _, want, _, _ in requests]
        finally:
            self.store.write_pending()
            self.backend.flush()

    def ask_ahead(self, loops: list[tuple[str, str]]) -> int:
        """Lease each `(loop, worker)` its next trial now, to hand over with its next reply.

        For loops whose trials are shorter than a round trip: sampled while the reply travels,
        the trial no longer waits for the sampler. Such a trial is sampled without the outcome
        of the one its loop runs now, so at most one is asked ahead beyond one trial per loop
        (the sampler sees at most `loops + 1` trials running, as if one more loop ran).
        Returns how many trials were asked."""
        asked = 0
        for loop, worker in loops:
            if loop in self.ahead or len(self.leases) > self.loops or not self._loop_has_room(loop):
                continue
            reply = self._ask(worker, loop)
            if reply["status"] != "run":
                break
            self.ahead[loop] = reply
            asked += 1
        self.backend.flush()
        return asked

    def _take_ahead(self, loop: str) -> list[dict[str, Any]]:
        """The trial asked ahead for `loop`, if it is still its lease (a lost loop's goes to
        others); the one the loop will run first counts as started, as in `_add_lease`."""
        reply = self.ahead.pop(loop, None)
        lease = self.leases.get(reply["number"]) if reply is not None else None
        if lease is None or lease.loop != loop:
            return []
        head = self.leases[self.loop_queues[loop][0]]
        if head.started is None:
            self._mark_started(head)
        return [reply]

    def _lease_batch(self, loop: str, worker: str, want: int) -> dict[str, Any] | None:
        trials = self._take_ahead(loop)
        while len(trials) < want and self._loop_has_room(loop):
            reply = self._ask(worker, loop)
            if reply["status"] != "run":
                break
            trials.append(reply)
        if trials:
            return {"status": "run", "trials": trials, "policy": self.policy, "ends_in": self._ends_in()}
        if self.decide() == "stop":
            return {"status": "stop", "reason": self.stop_reason, "trials": []}
        if want > 0:
            return None
        return {"status": "ok", "trials": [], "policy": self.policy, "ends_in": self._ends_in()}

    def suggest(self, number: int, method: str, name: str, kwargs: dict[str, Any]) -> Any:
        """A define-by-run parameter of a leased trial, sampled from the study as it is now.

        Reproducible scheduling cannot replay one (see `config.REPRODUCIBLE_ONLY`): the study
        stops, and the driver raises the reason as a `ConfigError` naming the parameter."""
        if self.window and name not in self.space and name not in self.leases[number].trial.params:
            self.stop_reason = (f"{INVALID_STUDY}search_space.{name}: suggested define-by-run by the "
                                f"objective; {REPRODUCIBLE_ONLY}: declare it in search_space")
            self.notify()
            raise ValueError(self.stop_reason)
        self.define_by_run = True
        fresh_trials_view(self.study)
        return getattr(self.leases[number].trial, method)(name, **kwargs)

    def should_prune(self, number: int) -> bool:
        """The pruner's verdict on a leased trial, from the study as it is now."""
        fresh_trials_view(self.study)
        return self.leases[number].trial.should_prune()

    def _ends_in(self) -> float | None:
        """Seconds until `budget.timeout_s`: a loop starts none of its trials after that."""
        timeout = self.config.budget.timeout_s
        return None if timeout is None else timeout - (time.monotonic() - self.opened)

    def _loop_has_room(self, loop: str) -> bool:
        """A loop holds at most 1 + prefetch cap trials and no more than its share of what is
        left of the budget; once fewer trials are left to lease than there are loops, it holds
        none ahead (the last trials go to idle loops, not behind a long-running one)."""
        held = len(self.loop_queues.get(loop, ()))
        if held == 0:
            return True
        if self.n_trials - self.finished - self.in_flight < self.loops:
            return False
        share = max(1, math.ceil((self.n_trials - self.finished) / max(1, self.loops)))
        return held < min(1 + self.policy["cap"], share)

    def _add_lease(self, lease: _Lease) -> None:
        queue = self.loop_queues.setdefault(lease.loop, deque())
        queue.append(lease.trial.number)
        self.leases[lease.trial.number] = lease
        self.leased_keys[lease.key] += 1
        if len(queue) == 1:
            self._mark_started(lease)

    def _mark_started(self, lease: _Lease) -> None:
        """Journaled, so a resume after a hard kill retries a begun trial and drops a held one."""
        lease.started = time.monotonic()
        storage_of(self.study).set_trial_system_attr(trial_id_of(lease.trial), STARTED_ATTR, True)

    def _drop_lease(self, number: int) -> _Lease | None:
        lease = self.leases.pop(number, None)
        if lease is None:
            return None
        self.leased_keys[lease.key] -= 1
        queue = self.loop_queues.get(lease.loop)
        if queue is not None:
            if queue and queue[0] == number:
                queue.popleft()
            elif number in queue:
                queue.remove(number)
            if not queue:
                del self.loop_queues[lease.loop]
        return lease

    def _release_unstarted(self, number: int) -> None:
        """A loop told to stop drops the trials it held but never started."""
        lease = self._drop_lease(number)
        if lease is None:
            return
        self.store.discard_staging(lease.key, number)
        self._discard(lease.trial)
        for trial in self.followers.pop(lease.key, []):
            self.ready.append(trial)

    def _discard(self, trial: optuna.Trial) -> None:
        self._mark_not_run(trial_id_of(trial))
        self._apply(_Outcome(trial, "FAIL", None))

    def _mark_not_run(self, trial_id: int) -> None:
        storage = storage_of(self.study)
        storage.set_trial_system_attr(trial_id, ERROR_ATTR, NOT_RUN_ERROR)
        storage.set_trial_system_attr(trial_id, NOT_RUN_ATTR, True)

    def _ask(self, worker: str, loop: str) -> dict[str, Any]:
        while True:
            decision = self.decide()
            if decision != "run":
                return {"status": decision, "reason": self.stop_reason}
            if self.ready:
                trial = self.ready.pop(0)
                key = self._key(trial)
            else:
                if self.window:
                    self._apply_received(upto=self._next_number() - self.window)
                trial, key = self._new_trial()
                stored = None if self.define_by_run else self.store.get(key)
                if stored is not None and stored.state == "COMPLETE":
                    self._answer_from_store(trial, stored)
                    continue
                if not self.define_by_run and self.leased_keys[key]:
                    self.followers.setdefault(key, []).append(trial)
                    continue
            attempt = int(storage_of(self.study).get_trial_system_attrs(trial_id_of(trial)).get(ATTEMPT_ATTR, 0))
            self._add_lease(_Lease(trial, key, worker, attempt, loop))
            params = trial.params
            started = trial.datetime_start
            return {
                "status": "run",
                "number": trial.number,
                "params": params,
                "key": key,
                "seed": trial_seed(key),
                "artifact_dir": self.store.staging_path(key, trial.number),
                # for `trial.distributions`, `trial.datetime_start` and Optuna's helpers there
                "distributions": self._distributions_json(trial, params),
                "datetime_start": None if started is None else started.isoformat(),
            }

    @functools.cached_property
    def _space_json(self) -> dict[str, str]:
        """The study file's distributions as Optuna's JSON, encoded once for every lease."""
        return {name: distribution_to_json(d) for name, d in self.space.items()}

    def _distributions_json(self, trial: optuna.Trial, params: dict[str, Any]) -> dict[str, str]:
        """The distribution of each parameter an asked trial has: the study file's (a retry of
        a define-by-run trial gets its own names only when the objective suggests them)."""
        space = self._space_json
        return {name: space[name] if name in space
                else distribution_to_json(trial.distributions[name]) for name in params}

    def _new_trial(self) -> tuple[optuna.Trial, str]:
        """A newly sampled trial and its key (journaled with it)."""
        if self.one_record is not None and not self._waiting():
            params = self.one_record.sample()
            key = trial_key(self.spec.key_base, params)
            return self.one_record.create(params, {KEY_ATTR: key}), key
        trial = self.study.ask(self.space)
        key = trial_key(self.spec.key_base, trial.params)
        storage_of(self.study).set_trial_system_attr(trial_id_of(trial), KEY_ATTR, key)
        return trial, key

    def _waiting(self) -> list[FrozenTrial]:
        """Enqueued retries, which `Study.ask` hands out before sampling anew."""
        return storage_of(self.study).get_all_trials(study_id_of(self.study), deepcopy=False, states=(TrialState.WAITING,))

    def _key(self, trial: optuna.Trial) -> str:
        return storage_of(self.study).get_trial_system_attrs(trial_id_of(trial))[KEY_ATTR]

    def _answer_from_store(self, trial: optuna.Trial, stored: StoredResult) -> None:
        for key, value in stored.user_attrs.items():
            trial.set_user_attr(key, value)
        storage = storage_of(self.study)
        try:
            attrs = self._system_attrs_to_set(stored.system_attrs, stored.user_attrs, "COMPLETE")
        except ValueError as exc:  # stored before the study file asked for constraints
            _logger.warning("study %s: trial %d answered from the store without constraints: %s",
                            self.config.name, trial.number, exc)
            attrs = {}
        for key, value in attrs.items():
            storage.set_trial_system_attr(trial_id_of(trial), key, value)
        storage.set_trial_system_attr(trial_id_of(trial), CACHED_ATTR, True)
        self.n_cached += 1
        self._receive(_Outcome(trial, "COMPLETE", stored.values, cached=True,
                               feasible=_feasible(attrs)), None)
        self._apply_received()  # async: the next ask sees it (reproducible: a no-op, see there)

    # --- telling ---

    def _tell_trial(
        self,
        number: int,
        state: str,
        values: list[float] | None,
        user_attrs: dict[str, Any],
        error: str | None,
        worker: str,
        duration_s: float | None = None,
        artifacts: bool = True,
        system_attrs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`artifacts`: the objective asked for its artifact folder (else there is nothing to
        move or discard: two file system calls per trial saved). `system_attrs`: the
        constraints and artifact records the objective set, set here before the tell (with the
        study file's `constraints.user_attr`), so the sampler sees them."""
        lease = self._drop_lease(number)
        if lease is None:  # already failed as lost or timed out; the late answer is dropped
            return {"status": "stale"}
        trial = lease.trial
        storage = storage_of(self.study)
        attrs: dict[str, Any] = {}
        try:
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            attrs = self._system_attrs_to_set(system_attrs or {}, user_attrs, state)
            for key, value in attrs.items():
                storage.set_trial_system_attr(trial_id_of(trial), key, value)
            storage.set_trial_system_attr(trial_id_of(trial), WORKER_ATTR, worker)
            if duration_s is not None:
                storage.set_trial_system_attr(trial_id_of(trial), DURATION_ATTR, duration_s)
            if error:
                storage.set_trial_system_attr(trial_id_of(trial), ERROR_ATTR, error)
        except Exception as exc:  # e.g. a user attr that is not JSON: fail the trial, not the loop
            _logger.exception("study %s: could not record trial %d", self.config.name, number)
            state, values, error = "FAIL", None, f"RecordError: {type(exc).__name__}: {exc}"
            storage.set_trial_system_attr(trial_id_of(trial), ERROR_ATTR, error)
        if state == "COMPLETE":
            params = storage.get_trial_params(trial_id_of(trial))
            # define-by-run params join the key; else they are the asked ones, keyed at the ask
            key = trial_key(self.spec.key_base, params) if self.define_by_run else lease.key
            if key != lease.key:
                storage.set_trial_system_attr(trial_id_of(trial), KEY_ATTR, key)
            self.store.put_later(StoredResult(key, state, values, dict(user_attrs), duration_s, params,
                                              self.config.name, number, attrs),
                                 number if artifacts else None, lease.key)
        elif artifacts:
            self.store.discard_staging(lease.key, number)
        self._receive(_Outcome(trial, state, values, feasible=_feasible(attrs)), error)
        self._release_followers(lease.key, state, values, user_attrs, attrs)
        self._apply_received()
        return {"status": "ok"}  # with the OS before the worker hears back; fsynced soon after

    def _release_followers(self, key: str, state: str, values: list[float] | None,
                           attrs: dict[str, Any], system_attrs: dict[str, Any]) -> None:
        """Trials that asked for a key while it ran share its result (or run it if it failed)."""
        for trial in self.followers.pop(key, []):
            if state == "COMPLETE":
                self._answer_from_store(trial, StoredResult(key, state, values, dict(attrs),
                                                            system_attrs=dict(system_attrs)))
            else:
                self.ready.append(trial)

    def _system_attrs_to_set(self, from_worker: dict[str, Any], user_attrs: dict[str, Any],
                             state: str) -> dict[str, Any]:
        """What the server sets on a told trial: the constraints and artifact records the
        objective set (nothing else), and the study file's `constraints.user_attr` of a
        COMPLETE or PRUNED trial (the states Optuna's `constraints_func` is called for)."""
        attrs = {k: v for k, v in from_worker.items() if k.startswith(WORKER_SYSTEM_ATTRS)}
        spec = self.config.constraints
        if spec is not None and state in ("COMPLETE", "PRUNED"):
            attrs = _user_attr_constraints(spec.user_attr, user_attrs, state == "COMPLETE") | attrs
        return attrs

    def fail_lease(self, number: int, error: str, retry: bool) -> None:
        """Mark a running trial FAIL and, for infrastructure errors, enqueue its retry."""
        lease = self._drop_lease(number)
        assert lease is not None
        storage = storage_of(self.study)
        trial_id = trial_id_of(lease.trial)
        storage.set_trial_system_attr(trial_id, WORKER_ATTR, lease.worker)
        storage.set_trial_system_attr(trial_id, ERROR_ATTR, error)
        self.store.discard_staging(lease.key, number)
        if retry and lease.attempt < self.config.budget.retries:
            self._enqueue_retry(lease.trial.params, number, lease.attempt + 1)
        self._receive(_Outcome(lease.trial, "FAIL", None), error)
        for trial in self.followers.pop(lease.key, []):
            self.ready.append(trial)
        self._apply_received()
        self.backend.flush_to_disk()

    def lose_leases(self, numbers: list[int], error: str) -> None:
        """Leases whose loop is gone (its worker died or was restarted): a trial the loop had
        started fails and is retried; one it only held waits, as it is, for another loop."""
        unstarted = [n for n in numbers if self.leases[n].started is None]
        for number in numbers:
            if number in unstarted:
                lease = self._drop_lease(number)
                assert lease is not None
                self.ready.append(lease.trial)
            else:
                self.fail_lease(number, error, True)

    def _enqueue_retry(self, params: dict[str, Any], number: int, attempt: int) -> None:
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

    # --- receiving and applying outcomes ---

    def _receive(self, outcome: _Outcome, error: str | None) -> None:
        self.received[outcome.trial.number] = outcome
        if self.finished_log is not None:
            self.finished_log.append(trial_id_of(outcome.trial))
        self._count(outcome.trial.number, outcome.state, outcome.values, error, outcome.feasible)

    def _apply_received(self, upto: int | None = None) -> None:
        """Tell Optuna the received outcomes the scheduling mode lets the sampler see now."""
        if not self.window:
            for number in sorted(self.received):
                self._apply(self.received.pop(number))
            return
        if upto is None:
            return  # reproducible: applied just before the ask that may see them
        in_flight = set(self._in_flight_numbers())
        for number in sorted(self.received):
            if number > upto or any(n < number for n in in_flight):
                break
            self._apply(self.received.pop(number))

    def apply_all(self) -> None:
        """At the end of a study (or a stop), every received outcome goes to the journal."""
        for number in sorted(self.received):
            self._apply(self.received.pop(number))
        self.backend.flush_to_disk()

    def _apply(self, outcome: _Outcome) -> None:
        # `Study.tell` is this plus a deep copy of the told trial (0.1 ms), which nobody reads here.
        if outcome.state == "COMPLETE":
            tell(self.study, outcome.trial, values=outcome.values)
        else:
            tell(self.study, outcome.trial, state=TrialState[outcome.state])

    def _count(self, number: int, state: str, values: list[float] | None, error: str | None,
               feasible: bool = True) -> None:
        if state == "COMPLETE":
            self.n_complete += 1
            self._track_best(number, values, feasible)
        elif state == "PRUNED":
            self.n_pruned += 1
        else:
            self.n_fail += 1
            if error and len(self.recent_errors) < 20:
                self.recent_errors.append(f"trial {number}: {error}")
            if not (error or "").startswith(INFRA_ERRORS):
                self.n_objective_fail += 1
                if number < 10:
                    self.n_objective_fail_first10 += 1
                self._check_failures()
        patience = self.config.budget.patience
        if patience is not None and self.since_improvement >= patience and self.stop_reason is None:
            self.stop_reason = "patience"

    def _track_best(self, number: int, values: list[float] | None, feasible: bool = True) -> None:
        """The best feasible value so far (as `Study.best_trial` picks it), and patience."""
        if values is None or len(self.config.study_directions) != 1:
            return
        value = values[0]
        maximize = self.config.study_directions[0] == "maximize"
        better = feasible and (self.best_value is None or (
            value > self.best_value if maximize else value < self.best_value))
        if better:
            self.best_value, self.best_number = value, number
            self.since_improvement = 0
        else:
            self.since_improvement += 1

    def _check_failures(self) -> None:
        limit = self.config.budget.max_failures
        n = self.n_objective_fail
        if limit is not None:
            if n > limit:
                self.stop_reason = f"too many failures: {n} > budget.max_failures={limit}"
            return
        total = self.finished + n
        if self.n_objective_fail_first10 >= 10 and self.finished == 0:
            self.stop_reason = "too many failures: the first 10 trials all failed"
        elif total >= 10 and n > total / 2:
            self.stop_reason = f"too many failures: {n} of {total} trials failed (more than half)"

    # --- opening, resuming, closing ---

    def resume(self) -> None:
        """Count what the journal holds. A trial left RUNNING by a killed run is completed from
        the store when its result got there, else failed and re-enqueued with its parameters
        (a journal has no heartbeat to tell us)."""
        storage = storage_of(self.study)
        for trial in self.study.get_trials(deepcopy=False):
            if trial.system_attrs.get(NOT_RUN_ATTR) or WARM_START_ATTR in trial.system_attrs:
                continue
            if trial.state == TrialState.RUNNING and not trial.system_attrs.get(STARTED_ATTR):
                self._mark_not_run(trial_id_of(trial))  # only held by a loop: a rerun samples afresh
                storage.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
                continue
            self.n_resumed += trial.state != TrialState.WAITING
            self.define_by_run |= not set(trial.params) <= set(self.space)
            if trial.state == TrialState.RUNNING:
                stored = self.store.get(trial.system_attrs.get(KEY_ATTR, ""))
                if stored is not None and stored.state == "COMPLETE":
                    storage.set_trial_state_values(trial_id_of(trial), TrialState.COMPLETE, stored.values)
                    self._count(trial.number, "COMPLETE", stored.values, None)
                    continue
                error = "Interrupted: the run was stopped mid-trial"
                storage.set_trial_system_attr(trial_id_of(trial), ERROR_ATTR, error)
                storage.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
                attempt = int(trial.system_attrs.get(ATTEMPT_ATTR, 0))
                self._enqueue_retry(trial.params, trial.number, attempt + 1)
                self.n_fail += 1
            elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
                self._count(trial.number, trial.state.name, trial.values, trial.system_attrs.get(ERROR_ATTR),
                            _feasible(trial.system_attrs))
        self.stop_reason = None  # a resumed run decides afresh (the budget may have grown)
        self.backend.flush_to_disk()

    def close(self, reason: str) -> ClosedStudy:
        """Stop handing out trials; fail (and re-enqueue) running ones; write everything.

        Returns the final trials and best, so the driver need not replay the journal it has
        just been served from (0.16 s at 2,000 trials, more than a tenth of such a study)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        unstarted = [n for n, lease in self.leases.items() if lease.started is None]
        for number in unstarted:
            self.ready.append(self._drop_lease(number).trial)  # type: ignore[union-attr]
        for number in list(self.leases):
            self.fail_lease(number, "Interrupted: the run was stopped", True)
        for trial in [t for ts in self.followers.values() for t in ts] + self.ready:
            # Held by a loop, or waiting for one: a rerun samples afresh. (A loop may have begun
            # the trial it held while its last outcome travelled; that result is dropped.)
            self._discard(trial)
        self.followers.clear()
        self.ready.clear()
        self.apply_all()
        self.store.close()
        self.backend.close()
        return ClosedStudy(self.study.get_trials(deepcopy=False), best_of(self.study))

    def track_finished(self) -> None:
        """Log the finish order from now on, after the trials already finished (history)."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        finished = self.study.get_trials(deepcopy=False, states=states)
        self.finished_log = [trial_id_of(t) for t in finished]
        self.n_history = len(self.finished_log)

    def finished_since(self, since: int) -> dict[str, Any]:
        """The trials finished from position `since` of the finish order on, for the driver's
        callbacks: `trials`, the next position `cursor`, and `history`, how many of them finished
        before this run. An outcome the scheduling mode has not applied yet is shown as it will
        be applied, so each trial is sent once, finished."""
        assert self.finished_log is not None, "the driver did not ask for finished trials"
        trials = [self._finished_trial(i) for i in self.finished_log[since:]]
        history = max(0, self.n_history - since)
        return {"trials": trials, "cursor": since + len(trials), "history": history}

    def _finished_trial(self, trial_id: int) -> FrozenTrial:
        trial = copy.copy(storage_of(self.study).get_trial(trial_id))
        outcome = self.received.get(trial.number)
        if outcome is not None and not trial.state.is_finished():
            trial.state = TrialState[outcome.state]
            trial.values = outcome.values if outcome.state == "COMPLETE" else None
            trial.datetime_complete = datetime.now()
        return trial

    def status(self) -> dict[str, Any]:
        done = self.decide() == "stop" and not self.leases
        return {
            "n_trials": self.n_trials,
            "complete": self.n_complete,
            "pruned": self.n_pruned,
            "failed": self.n_fail,
            "cached": self.n_cached,
            "running": self.running,
            "resumed": self.n_resumed,
            "best_value": self.best_value,
            "best_number": self.best_number,
            "stop_reason": self.stop_reason,
            "done": done,
            "errors": list(self.recent_errors),
        }


def _user_attr_constraints(name: str, user_attrs: dict[str, Any],
                           required: bool) -> dict[str, float]:
    """`constraints: {user_attr: name}`: that user attr (a number or a list of numbers) as the
    trial's constraints "0", "1", ..., as Optuna's `constraints_func` returning it gives them."""
    if name not in user_attrs:
        if not required:
            return {}
        raise ValueError(f"the study file's constraints.user_attr is {name!r}, but the objective "
                         "set no such user attr")
    raw = user_attrs[name]
    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v) for v in items):
        raise ValueError(f"constraints.user_attr {name!r} must be a number or a list of numbers "
                         f"(not NaN), got {raw!r}")
    return {f"{CONSTRAINT_PREFIX}{i}": float(v) for i, v in enumerate(items)}


def _feasible(system_attrs: dict[str, Any]) -> bool:
    """Every constraint in these system attributes is <= 0 (Optuna's feasibility)."""
    return all(v <= 0 for k, v in system_attrs.items() if k.startswith(CONSTRAINT_PREFIX))


@dataclass
class ClosedStudy:
    """What a closed study hands back to the plugin, which sends its driver the trials table
    built from it (`server._final_tables`)."""

    trials: list[FrozenTrial]
    best: dict[str, Any]


def best_of(study: optuna.Study) -> dict[str, Any]:
    """The best trial (one objective) or the Pareto front (several), as `best.json` holds them."""
    none = {"best_number": None, "best_values": None, "best_params": None}
    # in a constrained study only feasible trials can be best, as `Study.best_trial` has it
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values is not None and _feasible(t.system_attrs)]
    own = [t for t in complete if WARM_START_ATTR not in t.system_attrs]
    if not own:
        return none
    if len(own) < len(complete):  # warm-start trials are an earlier study's, not this one's best
        return _best_of_own(own, study.directions, none)
    if len(study.directions) == 1:
        best = study.best_trial
        return {"best_number": best.number, "best_values": best.values, "best_params": best.params}
    front = [{"number": t.number, "values": t.values, "params": t.params} for t in study.best_trials]
    return none | {"pareto_front": front}


def _best_of_own(
    trials: list[FrozenTrial], directions: list[Any], none: dict[str, Any]
) -> dict[str, Any]:
    """`best_of` over these trials only: the first best one, or the non-dominated ones."""
    minimize = optuna.study.StudyDirection.MINIMIZE
    signs = np.array([1.0 if d == minimize else -1.0 for d in directions])
    values = np.array([t.values for t in trials], dtype=float) * signs
    if len(directions) == 1:
        best = trials[int(np.argmin(values[:, 0]))]
        return {"best_number": best.number, "best_values": best.values, "best_params": best.params}
    front = [{"number": t.number, "values": t.values, "params": t.params}
             for t, v in zip(trials, values)
             if not ((values <= v).all(axis=1) & (values < v).any(axis=1)).any()]
    return none | {"pareto_front": front}


def _seed_new_study(study: optuna.Study, spec: StudySpec) -> None:
    """A new journal starts with the `warm_start` history and then the `enqueue` trials, which
    run first; a resumed journal has both already."""
    study.add_trials(spec.warm_trials)
    for params in spec.config.enqueue:
        study.enqueue_trial(params)


def open_study(spec: StudySpec) -> ServedStudy:
    cfg = spec.config
    backend = SingleWriterJournal(spec.journal_path)
    study = optuna.create_study(
        storage=ServerJournalStorage(backend),
        study_name=cfg.name,
        directions=cfg.study_directions,
        sampler=make_sampler(cfg),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    existing = storage_of(study).get_n_trials(study_id_of(study))
    if existing:
        study.sampler = make_sampler(cfg, resumed_trials=existing)
    else:
        _seed_new_study(study, spec)
    n_trials = cfg.budget.n_trials
    if cfg.sampler.name == "grid":
        n_trials = min(n_trials, grid_size(cfg))  # the grid sampler revisits once exhausted
    store = TrialStore(spec.store_root)
    store.load_index()
    served = ServedStudy(spec=spec, study=study, backend=backend, store=store, n_trials=n_trials)
    served.resume()
    if spec.track_finished:
        served.track_finished()
    return served
