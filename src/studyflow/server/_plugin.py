"""The study server: a Dask scheduler plugin that holds each `optuna.Study`.

Trial loops on the workers call its handlers over the scheduler's RPC, each named
`studyflow_<verb>`: `open`, `exchange` (tell finished trials, lease the next: `_service.py`),
`suggest`, `report`, `should_prune`, `study_view` (what `trial.study` reads), `status`,
`finished` (for the driver's callbacks), `stop` (`study.stop()`), `release_loop`, `close`,
`held` (the objective and data given to `optimize()` as values).
Every access to a study runs under that study's `asyncio.Lock`; sampler work runs off the
event loop unless it is short.

The server owns the budget: it hands out a new trial only while `finished + running <
n_trials`, so exactly `n_trials` trials finish (COMPLETE or PRUNED) whatever the concurrency.
Running trials are leased to a worker; when the scheduler reports the worker gone
(`remove_worker`), its trials are marked FAIL ("worker lost") and re-enqueued with the same
parameters up to `budget.retries` times.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import optuna
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol import to_serialize

from studyflow._compat import offload
from studyflow.protocol import STOP_OP
from studyflow.protocol import SUGGEST_METHODS
from studyflow.protocol import ExchangeRequest
from studyflow.server._budget import STOP_CALLED
from studyflow.server._budget import STUDY_FAILED
from studyflow.server._lifecycle import StudySpec
from studyflow.server._lifecycle import check_paths
from studyflow.server._lifecycle import close
from studyflow.server._lifecycle import open_study
from studyflow.server._malloc import keep_freed_memory
from studyflow.server._service import Exchange
from studyflow.server._service import inline_or_offloaded
from studyflow.server._service import StudyService
from studyflow.server._shares import water_fill
from studyflow.server._replies import FINISHED_INLINE
from studyflow.server._replies import STUDY_VIEW_ATTRS
from studyflow.server._replies import final_tables
from studyflow.server._replies import pickled_finished
from studyflow.server._replies import study_view_of
from studyflow.server._replies import suggested_value
from studyflow.server._study import ServedStudy
from studyflow.errors import StudyflowError

_logger = logging.getLogger(__name__)
HUNG_KILL_S = 0.5  # a hung trial's worker is asked to close, and killed 0.4 s later (`_kill_workers`)
MEMORY_EVENT_WAIT_S = 0.2  # for a nanny's memory stop event trailing its worker's removal


class UnknownStudyError(KeyError):
    """A call names a study id this server did not open (or has closed): one line, unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_handed_over: dict[str, bytes] = {}  # `hand_over`'s: held values by token, until a study opens


def hand_over(held: bytes) -> str:
    """A token under which this process's study server takes `held` when the study opens
    (`open(held_token=...)`): a driver whose scheduler runs in its own process (a local or
    SLURM cluster) need not send it through the scheduler's comm, which, over TLS, cost 0.7 s
    for 200 MB between two threads of one process."""
    token = uuid.uuid4().hex
    _handed_over[token] = held
    return token


class StudyServer(SchedulerPlugin):
    """Scheduler plugin serving studies to trial loops; one instance serves many studies."""

    name = "studyflow"
    idempotent = True

    def __init__(self) -> None:
        self._studies: dict[str, ServedStudy] = {}  # {study_id: study}
        self._froze = False
        self.suggests_served = 0  # define-by-run suggests that cost a round trip, all studies

    def _freeze_baseline(self, studies_open: bool) -> None:
        """A full garbage collection walks every object in the process, and a driver with a
        local cluster holds a great many (modules, Dask). While studies are open, what existed
        before the first one is frozen (`gc.freeze`), so a collection walks only what the
        studies made; it is unfrozen when the last one closes."""
        if studies_open and not self._froze:
            gc.freeze()
        elif not studies_open and self._froze:
            gc.unfreeze()
        self._froze = studies_open

    async def close(self) -> None:
        self._freeze_baseline(False)

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        keep_freed_memory()  # the sampler's arrays stay in the process between asks (_malloc.py)
        self._studies = {}
        self._memory_stops: dict[str, int] = {}  # worker -> its RSS when its nanny stopped it
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        scheduler.handlers.update(
            {
                "studyflow_open": self.open,
                "studyflow_exchange": self.exchange,
                "studyflow_suggest": self.suggest,
                "studyflow_report": self.report,
                "studyflow_should_prune": self.should_prune,
                "studyflow_study_view": self.study_view,
                "studyflow_status": self.status,
                "studyflow_release_loop": self.release_loop,
                "studyflow_resize": self.resize,
                "studyflow_close": self.close_study,
                "studyflow_finished": self.finished,
                "studyflow_stop": self.stop,
                "studyflow_held": self.held,
            }
        )

    def _get(self, study_id: str) -> ServedStudy:
        try:
            return self._studies[study_id]
        except KeyError:
            raise UnknownStudyError(f"studyflow: no open study {study_id!r} on this scheduler "
                                    "(never opened here, or closed); refused") from None

    async def open(self, spec: bytes, held: bytes = b"", held_token: str | None = None) -> dict[str, Any]:
        """Open a study (`spec`: a pickled `StudySpec`), holding `held` (or what a driver in
        this process handed over under `held_token`) for its trial loops as it came: the
        scheduler never unpickles a user's objective or data."""
        if held_token is not None:
            held = _handed_over.pop(held_token, None)
            if held is None:
                raise StudyflowError("studyflow_open: held_token names nothing handed over in this process; refused")
        study_spec: StudySpec = pickle.loads(spec)
        check_paths(study_spec)
        old = self._studies.pop(study_spec.study_id, None)
        if old is not None:
            old.backend.close()
        served = await offload(open_study, study_spec)
        served.held = held
        self._studies[study_spec.study_id] = served
        self._freeze_baseline(True)
        service = StudyService(served, lambda: self._studies.get(study_spec.study_id) is served, self._removed)
        served.service = service
        service.task = asyncio.ensure_future(service.run())
        service.task.add_done_callback(lambda task: self._service_ended(study_spec.study_id, served, task))
        if served.config.budget.trial_timeout_s is not None:
            asyncio.ensure_future(self._watch_timeouts(study_spec.study_id, served))
        return served.status()

    def _service_ended(self, study_id: str, served: ServedStudy, task: asyncio.Future) -> None:
        """A service task that ends while its study is open died (a bug, or it was cancelled):
        no exchange would ever be answered again, so the study fails with its error, and its
        driver, which sees it done at once, raises it (`ServedStudy.fail`)."""
        if self._studies.get(study_id) is not served:
            return  # closed: the task ended as it should
        error = "cancelled" if task.cancelled() else repr(task.exception())
        _logger.error("study %s: the study server's service task died (%s)", served.config.name, error,
                      exc_info=None if task.cancelled() else task.exception())
        served.fail(f"{STUDY_FAILED}the study server's service task died: {error}")

    async def _watch_timeouts(self, study_id: str, served: ServedStudy) -> None:
        """Fail trials that run past `budget.trial_timeout_s` and restart their workers (the
        only way to stop a hung objective); the study goes on with the next trial."""
        limit = served.config.budget.trial_timeout_s
        assert limit is not None
        while self._studies.get(study_id) is served:
            await asyncio.sleep(min(1.0, limit / 4))
            async with served.lock:
                expired = served.leases.expired(limit)
                for number, _ in expired:
                    error = f"Timeout: trial ran longer than budget.trial_timeout_s={limit:g} s"
                    await offload(served.fail_lease, number, error, False)
            if not expired:
                continue
            workers = sorted({worker for _, worker in expired})
            _logger.warning("study %s: trials %s timed out; restarting workers %s",
                            served.config.name, [n for n, _ in expired], workers)
            served.notify()
            await self._kill_workers(workers)

    async def _kill_workers(self, workers: list[str]) -> None:
        """Kill the workers of hung trials; each nanny starts a new one, as after a crash. Not
        `Scheduler.restart_workers`: it asks a worker to close and kills it only 4 s later, and
        one whose trial hangs never closes, so each timeout cost its slot 4 s more. A worker
        without a nanny, or whose nanny does not answer, goes through it (it removes those)."""
        nannies = {addr: ws.nanny for addr in workers
                   if (ws := self.scheduler.workers.get(addr)) is not None and ws.nanny}
        answers = await asyncio.gather(*(
            self.scheduler.rpc(nanny).kill(timeout=HUNG_KILL_S, reason="studyflow-trial-timeout")
            for nanny in nannies.values()), return_exceptions=True)
        rest = [addr for addr in workers if addr not in nannies]
        rest += [addr for addr, answer in zip(nannies, answers) if isinstance(answer, BaseException)]
        if rest:
            await self.scheduler.restart_workers(rest, timeout=30, wait_for_workers=False, on_error="return",
                                                 stimulus_id=f"studyflow-timeout-{time.time()}")

    async def exchange(self, study_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Tell a loop's finished trials and lease it up to `want` more (`protocol.ExchangeRequest`
        in, `protocol.Reply` out). A loop that has nothing to run waits up to `wait_s` for a
        trial ('wait' after that); 'stop' ends it. Outcomes reach the OS before the reply (and
        the disk soon after). With `ahead`, the server samples the loop's next trial once the
        reply has left, and hands it over with the next reply."""
        served = self._get(study_id)
        exchange = ExchangeRequest.from_wire(request)
        return await served.service.submit(Exchange(exchange, time.monotonic() + exchange.wait_s))

    def _reshare(self) -> None:
        """Split the slots among the open studies; a study over its share stops loops."""
        open_ = {sid: s for sid, s in self._studies.items() if s.slots}
        if not open_:
            return
        slots = max(s.slots for s in open_.values())
        wants = {sid: (s.config.concurrency or s.ordering.window or slots) for sid, s in open_.items()}
        for sid, share in water_fill(slots, wants).items():
            open_[sid].loop_quota = share if len(open_) > 1 else None

    def _removed(self, request: Exchange) -> bool:
        """A worker being restarted or removed still runs its event loop for a while; it may
        come back at the same address, so the process's id is compared too."""
        ws = self.scheduler.workers.get(request.request.worker)
        worker_id = request.request.worker_id
        return ws is None or (worker_id is not None and ws.server_id != worker_id)

    async def suggest(
        self, study_id: str, number: int, method: str, name: str, kwargs: dict[str, Any],
        before: list[list[Any]] | None = None,
    ) -> dict[str, Any]:
        if method not in SUGGEST_METHODS:
            raise ValueError(f"studyflow: {method!r} is not a suggest method")
        served = self._get(study_id)
        self.suggests_served += 1
        async with served.lock:  # one parameter costs about one asked trial's sampling
            return await inline_or_offloaded(served, 1, suggested_value, served, number, method, name, kwargs,
                                             before or [])

    async def report(self, study_id: str, number: int, value: float, step: int) -> dict[str, Any]:
        served = self._get(study_id)
        async with served.lock:
            await inline_or_offloaded(served, 1, served.leases[number].trial.report, value, step)
        return {"status": "ok"}

    async def should_prune(self, study_id: str, number: int) -> dict[str, Any]:
        served = self._get(study_id)
        async with served.lock:
            prune = await offload(served.should_prune, number)  # a pruner may read every trial
        return {"prune": bool(prune)}

    async def study_view(
        self, study_id: str, attr: str, states: list[str] | None = None
    ) -> dict[str, Any]:
        """What `trial.study.<attr>` reads on a worker, pickled; the name and directions on
        the event loop, the rest (a pass over the trials) off it."""
        if attr not in STUDY_VIEW_ATTRS:
            raise ValueError(f"studyflow: trial.study has no {attr!r} to read")
        served = self._get(study_id)
        async with served.lock:
            if attr == "summary":
                return {"value": study_view_of(served.study, attr, states)}
            return {"value": await offload(study_view_of, served.study, attr, states)}

    async def stop(self, study_id: str) -> dict[str, Any]:
        """Optuna's `Study.stop()`, called by the objective or a driver's callback: no new trial
        starts, the running ones finish (held ones are given back unrun), then the study ends."""
        served = self._get(study_id)
        async with served.lock:
            if served.budget.stop_reason is None:
                served.budget.stop_reason = STOP_CALLED
            workers = {lease.worker for lease in served.leases.leases.values()}
        for worker in workers:  # its loops would begin the trials they hold before hearing it
            stream = self.scheduler.stream_comms.get(worker)
            if stream is not None:
                stream.send({"op": STOP_OP, "study_id": study_id})
        served.notify()
        return {"status": "ok"}

    async def held(self, study_id: str) -> dict[str, Any]:
        """The objective and data the driver gave as values (`protocol.Held`), cloudpickled;
        each worker process fetches them once. Never changed while the study is open: no lock.
        Sent as a frame of its own, not copied into the reply's msgpack."""
        return {"held": to_serialize(self._get(study_id).held)}

    async def release_loop(self, study_id: str, loop_id: str, error: str) -> dict[str, Any]:
        """A trial loop died (its task, key `loop_id`, errored): its trials go to other loops."""
        served = self._get(study_id)
        async with served.lock:
            numbers = served.leases.of_task(loop_id)
            await offload(served.lose_leases, numbers, f"WorkerLost: trial loop died: {error}")
        if numbers:
            served.notify()
        return {"released": numbers}

    async def resize(self, study_id: str, loops: int, concurrency: int) -> dict[str, Any]:
        """The driver runs `loops` trial loops now (workers joined or left): prefetch shares and,
        for a study without a set concurrency, the cap on trials in flight follow."""
        served = self._get(study_id)
        async with served.lock:
            served.resize(loops, concurrency)
        served.notify()
        return {"status": "ok"}

    async def status(self, study_id: str, wait_s: float = 0.0, slots: int | None = None) -> dict[str, Any]:
        """The study's counts; with `wait_s`, answer early only once the study is done. With
        `slots` (the cluster's slots its driver sees), also its `share` of them among the
        studies open on this scheduler (`_shares.water_fill`)."""
        served = self._get(study_id)
        if slots is not None:
            served.slots = slots
            self._reshare()
        deadline = time.monotonic() + wait_s
        while True:
            changed = served.changed
            async with served.lock:
                status = served.status()
            remaining = deadline - time.monotonic()
            if status["done"] or remaining <= 0:
                return status | {"share": served.loop_quota}
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def finished(self, study_id: str, since: int = 0) -> dict[str, Any]:
        """The trials finished since position `since` of the study's finish order, for the
        driver's callbacks (`ServedStudy.finished_since`; the study was opened with
        `track_finished`). Many (the history, at the first call) are pickled off the event loop."""
        served = self._get(study_id)
        async with served.lock:
            if served.finish_log is not None and len(served.finish_log.trial_ids) - since > FINISHED_INLINE:
                return await offload(pickled_finished, served, since)
            return pickled_finished(served, since)

    async def close_study(
        self, study_id: str, reason: str | None = None, finished_since: int | None = None
    ) -> dict[str, Any]:
        """Stop handing out trials; fail (and re-enqueue) running ones; close the journal. With
        `finished_since`, the reply also holds the trials finished since then (see `finished`):
        those between the driver's last poll and the close."""
        served = self._studies.pop(study_id, None)
        self._freeze_baseline(bool(self._studies))
        self._reshare()  # its slots go to the others
        if served is None:
            return {"status": "unknown"}
        async with served.lock:
            closed = await offload(close, served, reason or "closed")
        served.notify()
        reply = {"status": "closed", "result": await offload(final_tables, served, closed)}
        if finished_since is not None:
            reply["finished"] = await offload(pickled_finished, served, finished_since)
        return reply

    def log_event(self, topic: str, msg: Any) -> None:
        """Note a worker its nanny stops for memory, so its trials' error says so: a leak or an
        oversized trial, not a crash. The nanny sends the event as it stops the worker, and it
        may arrive just after the worker's removal: `_fail_trials_of` waits for it a moment."""
        if topic == "worker-restart-memory" and isinstance(msg, dict) and msg.get("worker"):
            self._memory_stops[msg["worker"]] = msg.get("rss") or 0

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> Awaitable[None] | None:
        """Fail and re-enqueue the trials of a worker that left. Awaitable only while a study is
        open: the scheduler awaits what its plugins return, and a cluster closing after its
        studies (SLURM's) cut that wait short for each worker it removed, which distributed
        logged as ERROR tracebacks after a study that had gone right."""
        if not self._studies:
            self._memory_stops.pop(worker, None)
        return self._fail_trials_of(worker) if self._studies else None

    async def _fail_trials_of(self, worker: str) -> None:
        try:
            waited = time.monotonic() + MEMORY_EVENT_WAIT_S
            while worker not in self._memory_stops and time.monotonic() < waited and any(
                    served.leases.of_worker(worker) for served in self._studies.values()):
                await asyncio.sleep(0.01)
            why = f"WorkerLost: worker {worker} left mid-trial"
            if worker in self._memory_stops:
                rss = self._memory_stops.pop(worker)
                why += f" (its nanny stopped it at 95% of its memory limit, using {rss / 2**20:,.0f} MiB)"
            for served in list(self._studies.values()):
                async with served.lock:
                    lost = served.leases.of_worker(worker)
                    await offload(served.lose_leases, lost, why)
                if lost:
                    _logger.warning("study %s: worker %s lost with trials %s", served.config.name, worker, lost)
                    served.notify()
        except asyncio.CancelledError:  # the scheduler is shutting down: the driver closes studies
            pass

