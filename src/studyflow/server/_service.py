"""One study's service task: every exchange that has arrived is served as one batch.

An exchange carries a loop's finished trials and asks for its next ones. The service task
takes every exchange waiting, tells all their outcomes, then leases trials to each
(`ServedStudy.serve`), so under load many trials cost one pass through the event loop and one
fit of the sampler's model. A batch expected to take more than `INLINE_S` (sampling with a long
history, big batches) runs off the event loop through `distributed`'s `offload`, so heartbeats
keep flowing while TPE thinks; a shorter one runs on the event loop, where it is cheaper than
the hand-off to the offload thread and back.

Invariants: every exchange gets exactly one reply (a lease, 'wait', 'stop', or the serving
error; 'stop' once the task has died, which fails the study, and from the first journal write
that fails, which stops it: logged once, in one line); a loop whose worker has left is
leased nothing and told to stop; an outcome is with the OS before any reply of its batch leaves;
the study's active time is journaled every `ACTIVE_SAVE_S` while it is open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from studyflow._compat import offload
from studyflow.errors import JournalWriteError
from studyflow.protocol import ExchangeRequest
from studyflow.protocol import Reply
from studyflow.server._budget import STUDY_FAILED
from studyflow.server._study import ACTIVE_SAVE_S
from studyflow.server._study import ServedStudy

_logger = logging.getLogger(__name__)

INLINE_S = 0.02  # serve a batch on the event loop when it should take less than this


async def inline_or_offloaded(served: ServedStudy, items: int, fn: Any, *args: Any) -> Any:
    """`fn(*args)` on the event loop when `items` at the study's learned cost per item fit in
    `INLINE_S`, else through `offload`."""
    if served.seconds_per_item * items < INLINE_S:
        return fn(*args)
    return await offload(fn, *args)


@dataclass
class Exchange:
    """One loop's request as the service holds it until it is answered."""

    request: ExchangeRequest
    deadline: float  # a loop waiting for a leasable trial gets 'wait' after this
    removed: bool = False  # its worker has left: take its outcomes, lease it nothing, stop it
    parked_at: float | None = None  # since when it waits for a trial to become leasable
    reply: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class StudyService:
    """Serves one study's exchanges while `is_open()`; `removed(exchange)` tells whether the
    exchange's worker has left the cluster."""

    def __init__(self, served: ServedStudy, is_open: Callable[[], bool],
                 removed: Callable[[Exchange], bool]) -> None:
        self.served, self.is_open, self.removed = served, is_open, removed
        self.task: asyncio.Future | None = None  # `run()`, once the plugin starts it

    def submit(self, request: Exchange) -> asyncio.Future:
        if self.task is not None and self.task.done():  # it died (see `_plugin._service_ended`)
            request.reply.set_result(Reply("stop", reason=self.served.stop_reason).wire())
            return request.reply
        self.served.requests.append(request)
        self.served.wakeup.set()
        return request.reply

    async def run(self) -> None:
        """Serve every waiting exchange as one batch, again and again."""
        served = self.served
        parked: list[Exchange] = []  # want trials, none to lease yet: retried on every change
        batch: list[Exchange] = []  # being served (answered below if serving it kills the task)
        try:
            while self.is_open():
                if not served.requests:
                    now = time.monotonic()
                    wait = min((r.deadline for r in parked), default=now + ACTIVE_SAVE_S) - now
                    try:
                        await asyncio.wait_for(served.wakeup.wait(), max(wait, 0))
                    except asyncio.TimeoutError:
                        pass
                if time.monotonic() - served.active_saved >= ACTIVE_SAVE_S and not served.broken:
                    async with served.lock:
                        try:
                            served.save_active_time()
                        except JournalWriteError as exc:
                            await self._journal_failed(exc)
                served.wakeup.clear()
                batch, served.requests, parked = served.requests + parked, [], []
                if batch:
                    parked = await self._serve_batch(batch)
                batch = []
        finally:
            for request in batch + served.requests + parked:
                if not request.reply.done():
                    request.reply.set_result(Reply("stop", reason=served.stop_reason).wire())

    async def _journal_failed(self, exc: JournalWriteError) -> None:
        """The journal cannot be written (a full disk): nothing more can be recorded, so the
        study stops at the first such error, logged once in one line. Its loops are told to
        stop (`_serve_batch`), and its driver sees it done and raises the error; the trial
        store's pending results are written first, so a resume completes from them the trials
        the journal has as running."""
        served = self.served
        if served.broken:
            return
        _logger.error("study %s: stopped: %s", served.config.name, exc)
        served.fail(f"{STUDY_FAILED}{exc}")
        try:
            await offload(served.store.drain)
        except OSError as store_exc:  # the same disk: the store logs it itself
            _logger.debug("trial store: %s", store_exc)

    async def _serve_batch(self, batch: list[Exchange]) -> list[Exchange]:
        served = self.served
        if served.broken:  # stopped (see `_journal_failed`): nothing more can be recorded
            for r in batch:
                if not r.reply.done():
                    r.reply.set_result(Reply("stop", reason=served.stop_reason).wire())
            return []
        for r in batch:  # checked when served: its trials may have gone back while it waited
            if self.removed(r):
                r.removed, r.request.want, r.request.running = True, 0, None
        requests = [r.request for r in batch]
        told = any(q.outcomes or q.dropped for q in requests)
        # asks to come (a trial asked ahead is only handed over) and tells: what the batch costs
        items = sum(len(q.outcomes) + max(0, q.want - (q.loop_id in served.leases.ahead)) for q in requests) or 1
        try:
            async with served.lock:  # outcomes are with the OS before any reply leaves
                started = time.perf_counter()
                replies = await inline_or_offloaded(served, items, served.serve, requests, told)
                served.note_served(time.perf_counter() - started, items)
        except JournalWriteError as exc:  # the journal's disk: the study stops, its loops too
            await self._journal_failed(exc)
            return await self._serve_batch(batch)
        except Exception as exc:  # a bug: the loops see it and die
            _logger.exception("study %s: serving %d exchanges failed", served.config.name, len(batch))
            for r in batch:
                if not r.reply.done():
                    r.reply.set_exception(exc)
            return []
        for q in requests:
            for o in q.outcomes:
                if o.traceback:
                    _logger.warning("study %s trial %d failed on %s:\n%s", served.config.name, o.number,
                                    q.worker, o.traceback)
            q.outcomes, q.dropped, q.running = [], [], None
        parked, ahead, now = [], [], time.monotonic()
        for r, reply in zip(batch, replies):
            if r.reply.done():  # the loop's RPC was cancelled
                continue
            if r.removed:
                r.reply.set_result(Reply("stop", reason="worker removed").wire())
            elif reply is None and now < r.deadline:
                r.parked_at = r.parked_at or now
                parked.append(r)
            else:
                reply = reply or Reply("wait")
                # time spent waiting for budget or concurrency, not serving: loops leave it out
                # of the round trip they pace prefetching by
                reply.parked_s = now - r.parked_at if r.parked_at is not None else 0.0
                r.reply.set_result(reply.wire())
                if r.request.ahead and reply.status == "run":
                    ahead.append((r.request.loop_id, r.request.worker))
        if told:  # after the replies: what waits for a change (the driver's status) runs after them
            served.notify()
        if ahead:
            await self._ask_ahead(ahead)
        return parked

    async def _ask_ahead(self, loops: list[tuple[str, str]]) -> None:
        """Sample the next trial of loops whose trials are shorter than a round trip while
        their replies travel: otherwise every such trial waits for the message to the server,
        the sampler, and the reply, one after the other (`ServedStudy.ask_ahead` bounds it)."""
        served = self.served
        await asyncio.sleep(0)  # the replies' handlers write them to their sockets first
        if served.requests or not self.is_open():
            return  # loops wait for the server already: serve them, sample nothing blind
        async with served.lock:
            started = time.perf_counter()
            try:
                asked = await inline_or_offloaded(served, len(loops), served.ask_ahead, loops)
            except JournalWriteError as exc:
                await self._journal_failed(exc)
                return
            except Exception:  # the sampler's: the loops' next exchange asks (and fails) in turn
                _logger.exception("study %s: asking ahead failed", served.config.name)
                return
            if asked:
                served.note_served(time.perf_counter() - started, asked)
