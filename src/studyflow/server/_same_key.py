"""Trials asked for a key that is already running: they wait for it instead of running it twice.

Invariants:
- A trial sampled with the key of a running lease waits in `followers[key]`; when that run
  ends it takes the run's result (COMPLETE) or, if the run failed, becomes `ready` to run
  itself. Ready trials are leased, in order, before anything new is sampled.
- A waiting trial counts as in flight for the budget, so no trial is asked for twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

import optuna


@dataclass
class SameKeyTrials:
    followers: dict[str, list[optuna.Trial]] = field(default_factory=dict)  # {key: trials}
    ready: list[optuna.Trial] = field(default_factory=list)  # followers whose leader failed

    def __len__(self) -> int:
        return sum(map(len, self.followers.values())) + len(self.ready)

    def numbers(self) -> list[int]:
        return [t.number for ts in self.followers.values() for t in ts] + [t.number for t in self.ready]

    def follow(self, key: str, trial: optuna.Trial) -> None:
        self.followers.setdefault(key, []).append(trial)

    def release(self, key: str) -> list[optuna.Trial]:
        """The trials that waited for `key` (its run ended); the caller answers or readies them."""
        return self.followers.pop(key, [])

    def drain(self) -> list[optuna.Trial]:
        """Every waiting trial, removed (the study closes: a rerun samples afresh)."""
        trials = [t for ts in self.followers.values() for t in ts] + self.ready
        self.followers.clear()
        self.ready = []
        return trials
