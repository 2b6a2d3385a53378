"""The study server: a Dask scheduler plugin that holds each `optuna.Study`.

Trial loops on the workers call its handlers (`studyflow_ask`, `studyflow_tell`, ...) over the
scheduler's RPC. Every access to a study runs under that study's `asyncio.Lock`, and the Optuna
work itself (sampling, journal appends) runs off the event loop through `distributed`'s
`offload`, so heartbeats keep flowing while TPE thinks.

The server owns the budget: it hands out a new trial only while `finished + running <
n_trials`, so exactly `n_trials` trials finish (COMPLETE or PRUNED) whatever the concurrency.
Running trials are leased to a worker; when the scheduler reports the worker gone, its trials
are marked FAIL ("worker lost") and re-enqueued with the same parameters up to
`budget.retries` times.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import optuna
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import offload
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from studyflow.config import StudyConfig
from studyflow.journal import SingleWriterJournal
from studyflow.space import distributions
from studyflow.space import grid_size
from studyflow.space import make_pruner
from studyflow.space import make_sampler

_logger = logging.getLogger(__name__)

ERROR_ATTR = "studyflow:error"
WORKER_ATTR = "studyflow:worker"
ATTEMPT_ATTR = "studyflow:attempt"
RETRY_OF_ATTR = "studyflow:retry_of"
SUGGEST_METHODS = ("suggest_float", "suggest_int", "suggest_categorical")
# Failures caused by the infrastructure, not the objective: retried, and not counted against
# `budget.max_failures`.
INFRA_ERRORS = ("WorkerLost", "Interrupted")


@dataclass
class StudySpec:
    """What the driver sends to open a study on the server."""

    study_id: str
    config: StudyConfig
    journal_path: str
    concurrency: int


@dataclass
class _Lease:
    trial: optuna.Trial
    worker: str
    attempt: int
    started: float


@dataclass
class _ServedStudy:
    spec: StudySpec
    study: optuna.Study
    backend: SingleWriterJournal
    n_trials: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    leases: dict[int, _Lease] = field(default_factory=dict)  # {trial number: lease}
    n_complete: int = 0
    n_pruned: int = 0
    n_fail: int = 0
    n_objective_fail: int = 0
    n_objective_fail_first10: int = 0
    n_resumed: int = 0
    best_value: float | None = None
    best_number: int | None = None
    since_improvement: int = 0
    stop_reason: str | None = None
    opened: float = field(default_factory=time.monotonic)
    recent_errors: list[str] = field(default_factory=list)

    @property
    def config(self) -> StudyConfig:
        return self.spec.config

    @property
    def finished(self) -> int:
        return self.n_complete + self.n_pruned

    def notify(self) -> None:
        """Wake every loop waiting for a change (a finished trial may free budget)."""
        self.changed.set()
        self.changed = asyncio.Event()

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
        if self.finished + len(self.leases) >= self.n_trials:
            return "wait"
        if len(self.leases) >= self.spec.concurrency:
            return "wait"
        return "run"

    # --- synchronous Optuna work: always called under `lock` through `offload` ---

    def ask(self, worker: str) -> dict[str, Any]:
        trial = self.study.ask(distributions(self.config))
        system_attrs = self.study._storage.get_trial_system_attrs(trial._trial_id)
        attempt = int(system_attrs.get(ATTEMPT_ATTR, 0))
        self.leases[trial.number] = _Lease(trial, worker, attempt, time.monotonic())
        return {"status": "run", "number": trial.number, "params": trial.params}

    def tell(
        self,
        number: int,
        state: str,
        values: list[float] | None,
        user_attrs: dict[str, Any],
        error: str | None,
        worker: str,
    ) -> dict[str, Any]:
        lease = self.leases.pop(number, None)
        if lease is None:  # already failed as lost or timed out; the late answer is dropped
            return {"status": "stale"}
        trial = lease.trial
        storage = self.study._storage
        try:
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker)
            if error:
                storage.set_trial_system_attr(trial._trial_id, ERROR_ATTR, error)
            if state == "COMPLETE":
                self._tell(trial, values=values)
            else:
                self._tell(trial, state=TrialState[state])
        except Exception as exc:  # e.g. a user attr that is not JSON: fail the trial, not the loop
            _logger.exception("study %s: could not record trial %d", self.config.name, number)
            state, values, error = "FAIL", None, f"RecordError: {type(exc).__name__}: {exc}"
            if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                storage.set_trial_system_attr(trial._trial_id, ERROR_ATTR, error)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        self.backend.flush_to_disk()
        self._count(number, state, values, error)
        return {"status": "ok"}

    def _tell(self, trial: optuna.Trial, **kwargs: Any) -> None:
        # GridSampler.after_trial calls study.stop() once the grid is used up, which Optuna only
        # allows inside optimize(); the server owns the budget, so mark this thread as inside.
        self.study._thread_local.in_optimize_loop = True
        self.study.tell(trial, **kwargs)

    def _count(self, number: int, state: str, values: list[float] | None, error: str | None) -> None:
        if state == "COMPLETE":
            self.n_complete += 1
            self._track_best(number, values)
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

    def _track_best(self, number: int, values: list[float] | None) -> None:
        if values is None or len(self.config.study_directions) != 1:
            return
        value = values[0]
        maximize = self.config.study_directions[0] == "maximize"
        better = self.best_value is None or (value > self.best_value if maximize else value < self.best_value)
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

    def fail_lease(self, number: int, error: str, retry: bool) -> None:
        """Mark a running trial FAIL and, for infrastructure errors, enqueue its retry."""
        lease = self.leases.pop(number)
        storage = self.study._storage
        trial_id = lease.trial._trial_id
        storage.set_trial_system_attr(trial_id, WORKER_ATTR, lease.worker)
        storage.set_trial_system_attr(trial_id, ERROR_ATTR, error)
        self._tell(lease.trial, state=TrialState.FAIL)
        if retry and lease.attempt < self.config.budget.retries:
            self._enqueue_retry(lease.trial.params, number, lease.attempt + 1)
        self.backend.flush_to_disk()
        self._count(number, "FAIL", None, error)

    def _enqueue_retry(self, params: dict[str, Any], number: int, attempt: int) -> None:
        self.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs={"fixed_params": params, RETRY_OF_ATTR: number, ATTEMPT_ATTR: attempt},
            )
        )

    def resume(self) -> None:
        """Count what the journal already holds; a trial left RUNNING by a killed run is failed
        and re-enqueued with its parameters (a journal has no heartbeat to tell us)."""
        storage = self.study._storage
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state == TrialState.RUNNING:
                storage.set_trial_system_attr(
                    trial._trial_id, ERROR_ATTR, "Interrupted: the run was stopped mid-trial"
                )
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                attempt = int(trial.system_attrs.get(ATTEMPT_ATTR, 0))
                self._enqueue_retry(trial.params, trial.number, attempt + 1)
                self.n_fail += 1
                self.n_resumed += 1
            elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                self.n_resumed += 1
                self._count(trial.number, trial.state.name, trial.values, None)
            elif trial.state == TrialState.FAIL:
                self.n_resumed += 1
                self._count(trial.number, "FAIL", None, trial.system_attrs.get(ERROR_ATTR))
        self.stop_reason = None  # a resumed run decides afresh (the budget may have grown)
        self.backend.flush_to_disk()

    def status(self) -> dict[str, Any]:
        done = self.decide() == "stop" and not self.leases
        return {
            "n_trials": self.n_trials,
            "complete": self.n_complete,
            "pruned": self.n_pruned,
            "failed": self.n_fail,
            "running": len(self.leases),
            "resumed": self.n_resumed,
            "best_value": self.best_value,
            "best_number": self.best_number,
            "stop_reason": self.stop_reason,
            "done": done,
            "errors": list(self.recent_errors),
        }


def _open_study(spec: StudySpec) -> _ServedStudy:
    cfg = spec.config
    backend = SingleWriterJournal(spec.journal_path)
    study = optuna.create_study(
        storage=JournalStorage(backend),
        study_name=cfg.name,
        directions=cfg.study_directions,
        sampler=make_sampler(cfg),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    n_trials = cfg.budget.n_trials
    if cfg.sampler.name == "grid":
        n_trials = min(n_trials, grid_size(cfg))  # the grid sampler revisits once exhausted
    served = _ServedStudy(spec=spec, study=study, backend=backend, n_trials=n_trials)
    served.resume()
    return served


class StudyServer(SchedulerPlugin):
    """Scheduler plugin serving studies to trial loops; one instance serves many studies."""

    name = "studyflow"
    idempotent = True

    def __init__(self) -> None:
        self._studies: dict[str, _ServedStudy] = {}  # {study_id: study}

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._studies = {}
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        scheduler.handlers.update(
            {
                "studyflow_open": self.open,
                "studyflow_ask": self.ask,
                "studyflow_tell": self.tell,
                "studyflow_suggest": self.suggest,
                "studyflow_report": self.report,
                "studyflow_should_prune": self.should_prune,
                "studyflow_status": self.status,
                "studyflow_close": self.close_study,
            }
        )

    def _get(self, study_id: str) -> _ServedStudy:
        try:
            return self._studies[study_id]
        except KeyError:
            raise KeyError(f"studyflow: no open study {study_id!r} on this scheduler") from None

    async def open(self, spec: bytes) -> dict[str, Any]:
        study_spec: StudySpec = pickle.loads(spec)
        old = self._studies.pop(study_spec.study_id, None)
        if old is not None:
            old.backend.close()
        served = await offload(_open_study, study_spec)
        self._studies[study_spec.study_id] = served
        if served.config.budget.trial_timeout_s is not None:
            asyncio.ensure_future(self._watch_timeouts(study_spec.study_id, served))
        return served.status()

    async def _watch_timeouts(self, study_id: str, served: _ServedStudy) -> None:
        """Fail trials that run past `budget.trial_timeout_s` and restart their workers (the
        only way to stop a hung objective); the study goes on with the next trial."""
        limit = served.config.budget.trial_timeout_s
        assert limit is not None
        while self._studies.get(study_id) is served:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            async with served.lock:
                expired = [(n, lease.worker) for n, lease in served.leases.items() if now - lease.started > limit]
                for number, _ in expired:
                    error = f"Timeout: trial ran longer than budget.trial_timeout_s={limit:g} s"
                    await offload(served.fail_lease, number, error, False)
            if not expired:
                continue
            workers = sorted({worker for _, worker in expired})
            _logger.warning("study %s: trials %s timed out; restarting workers %s",
                            served.config.name, [n for n, _ in expired], workers)
            served.notify()
            await self.scheduler.restart_workers(
                workers, timeout=30, wait_for_workers=False, on_error="return",
                stimulus_id=f"studyflow-timeout-{time.time()}",
            )

    async def ask(self, study_id: str, worker: str, wait_s: float = 1.0) -> dict[str, Any]:
        served = self._get(study_id)
        deadline = time.monotonic() + wait_s
        while True:
            changed = served.changed
            async with served.lock:
                decision = served.decide()
                if decision == "run":
                    return await offload(served.ask, worker)
                if decision == "stop":
                    return {"status": "stop", "reason": served.stop_reason}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"status": "wait"}
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                return {"status": "wait"}

    async def tell(
        self,
        study_id: str,
        number: int,
        state: str,
        values: list[float] | None = None,
        user_attrs: dict[str, Any] | None = None,
        error: str | None = None,
        traceback: str | None = None,
        worker: str = "",
    ) -> dict[str, Any]:
        served = self._get(study_id)
        async with served.lock:
            reply = await offload(served.tell, number, state, values, user_attrs or {}, error, worker)
        if traceback:
            _logger.warning("study %s trial %d failed on %s:\n%s", served.config.name, number, worker, traceback)
        served.notify()
        return reply

    async def suggest(
        self, study_id: str, number: int, method: str, name: str, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if method not in SUGGEST_METHODS:
            raise ValueError(f"studyflow: {method!r} is not a suggest method")
        served = self._get(study_id)
        async with served.lock:
            trial = served.leases[number].trial
            value = await offload(getattr(trial, method), name, **kwargs)
        return {"value": value}

    async def report(self, study_id: str, number: int, value: float, step: int) -> dict[str, Any]:
        served = self._get(study_id)
        async with served.lock:
            await offload(served.leases[number].trial.report, value, step)
        return {"status": "ok"}

    async def should_prune(self, study_id: str, number: int) -> dict[str, Any]:
        served = self._get(study_id)
        async with served.lock:
            prune = await offload(served.leases[number].trial.should_prune)
        return {"prune": bool(prune)}

    async def status(self, study_id: str) -> dict[str, Any]:
        served = self._get(study_id)
        async with served.lock:
            return served.status()

    async def close_study(self, study_id: str, reason: str | None = None) -> dict[str, Any]:
        """Stop handing out trials; fail (and re-enqueue) running ones; close the journal."""
        served = self._studies.pop(study_id, None)
        if served is None:
            return {"status": "unknown"}
        async with served.lock:
            if served.stop_reason is None:
                served.stop_reason = reason or "closed"
            for number in list(served.leases):
                await offload(served.fail_lease, number, "Interrupted: the run was stopped", True)
            served.backend.close()
        served.notify()
        return {"status": "closed"}

    async def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        for served in list(self._studies.values()):
            async with served.lock:
                lost = [n for n, lease in served.leases.items() if lease.worker == worker]
                for number in lost:
                    await offload(
                        served.fail_lease, number, f"WorkerLost: worker {worker} left mid-trial", True
                    )
            if lost:
                _logger.warning("study %s: worker %s lost with trials %s", served.config.name, worker, lost)
                served.notify()

