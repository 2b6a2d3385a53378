"""One study as the server holds it: asking, telling, and what a loop is leased.

Everything here is synchronous Optuna work; the plugin (`_plugin.py`) calls it under the
study's lock, off the event loop unless the work is short (see `_service.INLINE_S`). The
parts with one job each: the budget and stop rules (`_budget`), the lease table and loop
queues (`_leases`), trials waiting for a running key (`_same_key`), when outcomes are told to
Optuna (`_ordering`), constraints (`_constraints`), the finish order for callbacks
(`_finish_log`); opening, resuming and closing are `_lifecycle`'s.

Invariant: a trial is in exactly one of: leased (`leases`), waiting for its key or ready
(`same_key`), received but not yet applied (`ordering`), or told to Optuna.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import optuna

from studyflow._compat import storage_of
from studyflow._compat import study_id_of
from studyflow.config import StudyConfig
from studyflow.optuna_ext import GridInOneRecord
from studyflow.optuna_ext import IncrementalGridSampler
from studyflow.optuna_ext import RandomInOneRecord
from studyflow.optuna_ext import SingleWriterJournal
from studyflow.optuna_ext import distributions
from studyflow.protocol import ExchangeRequest
from studyflow.protocol import Reply
from studyflow.server._asking import Asking
from studyflow.server._asking import SharedSpace
from studyflow.server._budget import ACTIVE_S_ATTR
from studyflow.server._budget import GRID_RUN
from studyflow.server._budget import Budget
from studyflow.server._finish_log import FinishLog
from studyflow.server._leases import LeaseTable
from studyflow.server._lifecycle import StudySpec
from studyflow.server._ordering import Ordering
from studyflow.server._prefetch import prefetch_policy
from studyflow.server._same_key import SameKeyTrials
from studyflow.server._telling import Telling
from studyflow.store import TrialStore

_logger = logging.getLogger(__name__)
ACTIVE_SAVE_S = 5.0  # how often an open study journals its active time (`StudyService.run`)

@dataclass
class ServedStudy(Asking, Telling):
    spec: StudySpec
    study: optuna.Study
    backend: SingleWriterJournal
    store: TrialStore
    n_trials: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # the service task has work
    requests: list[Any] = field(default_factory=list)  # exchanges not yet served (_service.py)
    service: Any = None  # the plugin's service task
    seconds_per_item: float = 0.0  # serving time per outcome or wanted trial (see `note_served`)
    leases: LeaseTable = field(default_factory=LeaseTable)
    same_key: SameKeyTrials = field(default_factory=SameKeyTrials)
    finish_log: FinishLog | None = None  # the finish order, when the driver has callbacks
    slots: int = 0  # the cluster's slots its driver last saw
    loop_quota: int | None = None  # its share of them while other studies are open (`_shares`)
    seen_loops: dict[str, float] = field(default_factory=dict)  # {loop: last exchange}
    sampler_failures: int = 0  # failed asks in a row (`Asking._sampler_failed`)
    broken: bool = False  # its service task died: done at once, whatever loops still hold
    active_saved: float = field(default_factory=time.monotonic)  # when `save_active_time` last wrote
    held: bytes = b""  # the objective and data given as values, cloudpickled (`protocol.Held`)
    _shared: SharedSpace | None = None  # for define-by-run draws at the ask (`Asking._shared_space`)

    def __post_init__(self) -> None:
        self.budget = Budget(self.config, self.n_trials)
        self.space = distributions(self.config)
        # Only when every parameter comes from the study file's space does the ask know the
        # trial's key; once the objective suggests a name of its own, the key is known at the
        # tell, and trials are stored but not answered from the store at the ask.
        self.define_by_run = not self.space
        # random and grid search: trials drawn and journaled in one step each (optuna_ext)
        maker = next((m for m in (RandomInOneRecord, GridInOneRecord) if m.applies(self.study, self.space)), None)
        self.one_record = maker(self.study, self.space) if maker is not None else None
        sampler = self.study.sampler
        self.grid = sampler if isinstance(sampler, IncrementalGridSampler) else None
        window = self.spec.concurrency if self.config.scheduling == "reproducible" else 0
        self.ordering = Ordering(self.study, window)
        self._policies = (prefetch_policy(self.config), prefetch_policy(self.config, shared=True))
        self.loops = self.spec.loops or self.spec.concurrency
        self.trails_dir = str(self.store.root / "trails" / self.spec.study_id)  # the loops' (`_trail`)

    @property
    def config(self) -> StudyConfig:
        return self.spec.config

    @property
    def policy(self) -> dict[str, Any]:
        """The prefetch policy (`_prefetch`): the shared one while other studies are open on
        the cluster (`loop_quota` set), which every reply carries to its loop."""
        return self._policies[self.loop_quota is not None]

    @property
    def stop_reason(self) -> str | None:
        return self.budget.stop_reason

    @property
    def in_flight(self) -> int:
        return len(self.leases) + len(self.same_key)

    def _in_flight_numbers(self) -> list[int]:
        return list(self.leases.leases) + self.same_key.numbers()

    def notify(self) -> None:
        """Wake the service task (a finished trial may free budget for a waiting loop) and,
        once the study may be done, the driver's status poll: it answers early only then, and
        waking it on every batch put a pass of it on the path of every trial."""
        self.wakeup.set()
        if self.grid is not None and self.budget.stop_reason is None:
            self._grid_spent()  # the grid's last point told: the study stops now, not at the next ask
        if self.budget.stop_reason is not None or self.budget.finished >= self.n_trials:
            self.changed.set()
            self.changed = asyncio.Event()

    def decide(self) -> str:
        """'run', 'wait' or 'stop' for a loop asking for a trial."""
        if self.budget.stopped():
            return "stop"
        if self.grid is not None and not self.same_key.ready and self._grid_spent():
            return "stop" if self.budget.stopped() else "wait"  # (a ready trial runs its point still)
        if self.budget.finished + self.in_flight >= self.n_trials and not self.same_key.ready:
            return "wait"  # (a ready trial is already counted in flight: it may be leased)
        if len(self.leases) >= self.spec.concurrency * (1 + self.policy["cap"]):
            return "wait"
        if self.ordering.window and self.ordering.blocks(self._next_number(), self._in_flight_numbers()):
            return "wait"
        if not self.budget.patience_allows(self.in_flight, self.loops):
            return "wait"  # more could not finish before patience ends the study
        return "run"

    def _grid_spent(self) -> bool:
        """Whether a grid search needs no new trial: every point has a trial, finished or
        running, and no retry waits. `n_trials` counts COMPLETE trials, so failed points would
        otherwise send trials past the grid's first pass, where Optuna's grid sampler revisits
        points; it stops the study instead, and so does this ('grid'), once no trial is in
        flight (a trial still RUNNING in the journal then has its outcome received: reproducible
        scheduling tells outcomes in trial order, `_ordering`)."""
        assert self.grid is not None
        unstarted = self.grid.unstarted_points(self.study)
        if unstarted is None or unstarted > 0 or self._waiting():
            return False
        if not self.in_flight:
            self.budget.stop_reason = GRID_RUN
        return True

    def _next_number(self) -> int:
        waiting = self._waiting()
        if waiting:
            return min(t.number for t in waiting)
        return storage_of(self.study).get_n_trials(study_id_of(self.study))

    def resize(self, loops: int, concurrency: int) -> None:
        """The driver runs `loops` loops now; a study whose concurrency follows the cluster
        (none set, not reproducible, whose window is fixed) takes the new one."""
        self.loops = loops
        if self.config.concurrency is None and not self.ordering.window:
            self.spec.concurrency = concurrency

    def note_served(self, seconds: float, items: int) -> None:
        """Learn what a batch costs per item, so the plugin knows which batches to offload: a
        slower one (a sampler whose asks grow with the history) is believed at once, a faster
        one halves the gap (the sampler's first, cold ask is forgotten within a few batches)."""
        per_item = seconds / items
        self.seconds_per_item = max(per_item, self.seconds_per_item + 0.5 * (per_item - self.seconds_per_item))

    # --- serving loops ---

    def serve(self, requests: list[ExchangeRequest], durable: bool = False) -> list[Reply | None]:
        """Serve a batch of loop requests: every outcome is told first, then each loop gets up
        to `want` trials. All asks of a
        batch see the same history, so a sampler that caches its model fits it once per batch.
        Returns one reply per request (None: the loop wants a trial and none can be leased
        yet; the caller waits for a change). Every record is with the OS before it returns;
        when `durable`, another thread fsyncs the batch's tells soon after (`sync_soon`). The
        trials it finishes and starts carry one time, when it began (`one_moment`).
        """
        try:
            with storage_of(self.study).one_moment():
                for r in requests:
                    for outcome in r.outcomes:
                        self._tell_trial(outcome, r.worker, r.loop_id)
                    for number in r.dropped:
                        self._release_unstarted(number, r.loop_id)
                    lease = self.leases.get(r.running) if r.running is not None else None
                    if lease is not None and lease.loop == r.loop_id and lease.started is None:
                        self._mark_started(lease)  # the loop says it runs it (its timeout clock starts)
                self.store.write_pending()  # results first: a resume completes a told trial from them
                if durable:
                    self.backend.sync_soon()
                return [self._lease_batch(r.loop_id, r.worker, r.want) for r in requests]
        finally:
            self.store.write_pending()
            self.backend.flush()

    def save_active_time(self) -> None:
        """Journal the study's active time over its runs, for `timeout_s` on a resume (the
        service task does it every `ACTIVE_SAVE_S`, and `close`): a killed run loses at most
        the last `ACTIVE_SAVE_S` or so of it."""
        self.active_saved = time.monotonic()
        storage_of(self.study).set_study_system_attr(study_id_of(self.study), ACTIVE_S_ATTR,
                                                     round(self.budget.active_s(), 3))
        self.backend.flush()

    def fail(self, reason: str) -> None:
        """The server cannot serve the study any more: it is done, and its driver raises `reason`."""
        self.budget.stop_reason = reason
        self.broken = True
        self.notify()

    # --- reporting ---

    def finished_since(self, since: int) -> dict[str, Any]:
        """The trials finished since position `since` of the finish order (`FinishLog.since`)."""
        assert self.finish_log is not None, "the driver did not ask for finished trials"
        return self.finish_log.since(since, self.ordering.received)

    def status(self) -> dict[str, Any]:
        done = self.broken or (self.decide() == "stop" and not len(self.leases))
        return self.budget.counts() | {"running": self.leases.running, "done": done}
