"""Which trial loop holds which trial: the lease table and each loop's queue.

Invariants:
- A trial number is leased to at most one loop at a time; `leased_keys[k]` is the number of
  leases whose trial has key `k` (kept with `leases` by `add` and `drop` only).
- Each loop's queue lists its leased trials in the order it will run them; only the head may
  have begun (`Lease.started`), the others are held ahead of it (prefetch).
- `ahead[loop]` is a trial leased to that loop but not yet sent to it (asked while its reply
  travelled); it is sent with the loop's next reply if the lease is still the loop's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections import deque
from dataclasses import dataclass
from dataclasses import field
import optuna

from studyflow.protocol import TrialLease


@dataclass
class Lease:
    trial: optuna.Trial
    key: str
    worker: str
    attempt: int
    loop: str = ""
    started: float | None = None  # when its loop began it, as far as the server knows
    drawn: bool = False  # its relative parameters are the server's draws at the ask (`Asking._drawn`)
    journaled_key: str | None = None  # the key its journal records hold already (none: define-by-run)
    journaled_worker: str | None = None  # the worker its journal records name already (`Asking._new_trial`)


@dataclass
class LeaseTable:
    leases: dict[int, Lease] = field(default_factory=dict)  # {trial number: lease}
    leased_keys: Counter[str] = field(default_factory=Counter)  # {key: leases with it}
    loop_queues: dict[str, deque[int]] = field(default_factory=dict)  # {loop: numbers, in order}
    ahead: dict[str, TrialLease] = field(default_factory=dict)  # {loop: its trial, not yet sent}

    def __len__(self) -> int:
        return len(self.leases)

    def get(self, number: int) -> Lease | None:
        return self.leases.get(number)

    def __getitem__(self, number: int) -> Lease:
        return self.leases[number]

    @property
    def running(self) -> int:
        return sum(lease.started is not None for lease in self.leases.values())

    def held(self, loop: str) -> int:
        return len(self.loop_queues.get(loop, ()))

    def head(self, loop: str) -> Lease:
        """The trial the loop runs now, or will run first."""
        return self.leases[self.loop_queues[loop][0]]

    def add(self, lease: Lease) -> bool:
        """Lease a trial to its loop; True if it heads the loop's queue (it begins now)."""
        queue = self.loop_queues.setdefault(lease.loop, deque())
        queue.append(lease.trial.number)
        self.leases[lease.trial.number] = lease
        self.leased_keys[lease.key] += 1
        return len(queue) == 1

    def drop(self, number: int) -> Lease | None:
        """End a lease (told, failed or given back); None if it had ended already."""
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

    def take_ahead(self, loop: str) -> TrialLease | None:
        """The trial asked ahead for `loop`, if its lease is still the loop's."""
        leased = self.ahead.pop(loop, None)
        lease = self.leases.get(leased.number) if leased is not None else None
        return leased if lease is not None and lease.loop == loop else None

    def of_worker(self, worker: str) -> list[int]:
        return [n for n, lease in self.leases.items() if lease.worker == worker]

    def of_task(self, task_key: str) -> list[int]:
        """The trials held by any run of the loop task `task_key` (its loop ids extend it)."""
        return [n for loop, queue in self.loop_queues.items() if loop.startswith(f"{task_key}/") for n in queue]

    def expired(self, limit_s: float) -> list[tuple[int, str]]:
        """`(number, worker)` of the begun trials that have run longer than `limit_s`."""
        now = time.monotonic()
        return [(n, lease.worker) for n, lease in self.leases.items()
                if lease.started is not None and now - lease.started > limit_s]

    def unstarted(self) -> list[int]:
        return [n for n, lease in self.leases.items() if lease.started is None]
