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
from typing import Any

import optuna
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import offload

from studyflow.served_study import ServedStudy
from studyflow.served_study import StudySpec
from studyflow.served_study import open_study

_logger = logging.getLogger(__name__)

SUGGEST_METHODS = ("suggest_float", "suggest_int", "suggest_categorical")


class StudyServer(SchedulerPlugin):
    """Scheduler plugin serving studies to trial loops; one instance serves many studies."""

    name = "studyflow"
    idempotent = True

    def __init__(self) -> None:
        self._studies: dict[str, ServedStudy] = {}  # {study_id: study}

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

    def _get(self, study_id: str) -> ServedStudy:
        try:
            return self._studies[study_id]
        except KeyError:
            raise KeyError(f"studyflow: no open study {study_id!r} on this scheduler") from None

    async def open(self, spec: bytes) -> dict[str, Any]:
        study_spec: StudySpec = pickle.loads(spec)
        old = self._studies.pop(study_spec.study_id, None)
        if old is not None:
            old.backend.close()
        served = await offload(open_study, study_spec)
        self._studies[study_spec.study_id] = served
        if served.config.budget.trial_timeout_s is not None:
            asyncio.ensure_future(self._watch_timeouts(study_spec.study_id, served))
        return served.status()

    async def _watch_timeouts(self, study_id: str, served: ServedStudy) -> None:
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
        """Lease a trial, or say 'wait' (after up to `wait_s` of waiting for a change) or 'stop'."""
        served = self._get(study_id)
        deadline = time.monotonic() + wait_s
        while True:
            changed = served.changed
            async with served.lock:
                decision = served.decide()
                if decision == "run":
                    reply = await offload(served.ask, worker)
                    if reply["status"] != "wait":
                        return reply
                elif decision == "stop":
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
        duration_s: float | None = None,
        ask_next: bool = False,
    ) -> dict[str, Any]:
        """Record a finished trial; with `ask_next`, answer with the worker's next trial too
        (one round trip per trial instead of two)."""
        served = self._get(study_id)
        async with served.lock:
            reply = await offload(served.tell, number, state, values, user_attrs or {}, error, worker, duration_s)
        await self._durable(served)
        if traceback:
            _logger.warning("study %s trial %d failed on %s:\n%s", served.config.name, number, worker, traceback)
        served.notify()
        if ask_next:
            return {"told": reply["status"], "next": await self.ask(study_id, worker)}
        return reply

    async def _durable(self, served: ServedStudy) -> None:
        """Return once the journal is fsynced up to now. Tells that arrive while an fsync runs
        share the next one (group commit), so durability does not cap throughput at 1/fsync."""
        needed = served.backend.appended
        async with served.fsync_lock:
            if served.backend.synced < needed:
                await asyncio.get_running_loop().run_in_executor(None, served.backend.flush_to_disk)

    async def suggest(
        self, study_id: str, number: int, method: str, name: str, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if method not in SUGGEST_METHODS:
            raise ValueError(f"studyflow: {method!r} is not a suggest method")
        served = self._get(study_id)
        async with served.lock:
            served.define_by_run = True
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
            await offload(served.close, reason or "closed")
        served.notify()
        return {"status": "closed"}

    async def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        try:
            await self._fail_trials_of(worker)
        except asyncio.CancelledError:  # the scheduler is shutting down: the driver closes studies
            pass

    async def _fail_trials_of(self, worker: str) -> None:
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

