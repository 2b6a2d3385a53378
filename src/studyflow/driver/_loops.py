"""A study's trial loops: one long-lived Dask task per worker slot, following the workers.

A study starts as soon as one eligible worker is up. Each poll of the driver compares the
loops to the cluster as it is now: a loop is started for every eligible worker slot without
one (up to the study's concurrency; a study without a set `concurrency` grows with the
cluster), and a loop whose task errored, was cancelled (`Client.restart`) or lost is released
on the server (its trials go to other loops) and replaced. The server hears the loop count, so
its prefetch shares and concurrency cap follow.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from distributed import Client
from distributed import Future

from studyflow.errors import StudyflowError

_logger = logging.getLogger(__name__)

ENDED = ("error", "cancelled", "lost")


def eligible_slots(workers: list[dict[str, Any]], resources: dict[str, float]) -> int:
    """Worker threads that may run this study's trials: those whose workers carry every
    resource the study asks for (`worker_resources: {GPU: 1}` routes trials to GPU workers)."""
    eligible = [w for w in workers if all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())]
    if not resources:
        return sum(w["nthreads"] for w in eligible)
    return sum(min(w["nthreads"], *(int(w["resources"][k] // v) for k, v in resources.items() if v))
               for w in eligible)


class TrialLoops:
    """The loops of one study on one client."""

    def __init__(self, client: Client, study_id: str, name: str, loop_fn: Any, loop_args: tuple[Any, ...],
                 resources: dict[str, float], concurrency: int | None, max_restarts: int) -> None:
        self.client, self.study_id, self.name = client, study_id, name
        self.loop_fn, self.loop_args, self.resources = loop_fn, loop_args, resources
        self.concurrency = concurrency  # None: as many as there are slots
        self.max_restarts, self.restarts = max_restarts, 0
        self.futures: list[Future] = []
        self.told: tuple[int, int] | None = None  # (loops, concurrency) the server last heard

    def target(self, slots: int, share: int | None = None, left: int | None = None) -> tuple[int, int]:
        """(loops to run, the study's concurrency) for this many eligible slots, the study's
        share of them while other studies use the cluster too, and (adaptive clusters) the
        trials left."""
        concurrency = self.concurrency or max(1, slots)
        return max(0, min(concurrency, slots, share or slots, slots if left is None else left)), concurrency

    def follow(self, slots: int, done: bool, share: int | None = None, left: int | None = None) -> None:
        """Replace ended loops and start one per new slot up to the study's share (nothing
        once the study is done). A loop the server stopped (its share shrank, or an adaptive
        cluster's budget has no trial left for it) is let go."""
        if done:
            return
        self.futures = [fut for fut in self.futures if fut.status != "finished"]
        for i, fut in enumerate(self.futures):
            if fut.status in ENDED:
                self._release(fut)
                self.futures[i] = self._start()
        loops, concurrency = self.target(slots, share, left)
        while len(self.futures) < loops:
            self.futures.append(self._start())
        if (len(self.futures), concurrency) != self.told:
            self.told = (len(self.futures), concurrency)
            self.client.sync(self.client.scheduler.studyflow_resize, study_id=self.study_id,
                             loops=len(self.futures), concurrency=concurrency)

    def _start(self) -> Future:
        key = f"studyflow-loop-{self.study_id}-{len(self.futures)}-{uuid.uuid4().hex[:6]}"
        return self.client.submit(self.loop_fn, *self.loop_args, key=key, pure=False,
                                  resources=self.resources or None)

    def _release(self, fut: Future) -> None:
        """A loop that ended before the study: its trials go back to the server for others."""
        if fut.status == "error":
            self.restarts += 1
            exc = fut.exception()
            if self.restarts > self.max_restarts:
                raise StudyflowError(f"study {self.name}: trial loops keep dying; last error: {exc!r}")
            why = repr(exc)
        else:  # cancelled (a restart of the cluster) or lost with its worker
            why = f"its task was {fut.status}"
        _logger.warning("study %s: trial loop ended (%s); starting another", self.name, why)
        self.client.sync(self.client.scheduler.studyflow_release_loop, study_id=self.study_id,
                         loop_id=fut.key, error=why[:200])
