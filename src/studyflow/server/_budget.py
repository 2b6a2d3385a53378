"""A study's budget and stop rules: what has finished, the best so far, and when to stop.

Invariants:
- `finished` counts COMPLETE and PRUNED trials; the server leases a new trial only while
  `finished + in flight < n_trials`, so exactly `n_trials` finish (`n_trials: null`: `UNLIMITED`,
  and another rule or a `study.stop()` ends the study, or Ctrl-C); a grid search also ends
  once every point of its grid has run, failed ones included (`GRID_RUN`), as Optuna's does.
- Once set, `stop_reason` stays until `reopen()`: a resumed run decides afresh what its budget
  may have changed (`n_trials` raised), but the failures and the time it counts are the runs'
  together (`resume` counts the journal's failures; `active_before_s` is the earlier runs' active
  time, kept in the journal as `ACTIVE_S_ATTR`), so `max_failures` and `timeout_s` mean the same
  on a resumed study as on one run.
- A failure caused by the infrastructure (`INFRA_ERRORS`: a lost worker, an interrupted run) is
  retried and never counts toward `budget.max_failures`; the objective's own failures do.
- Only a feasible COMPLETE trial can be the best (Optuna's `best_trial` has it so), and only
  an improvement resets patience: a better best, or, with several objectives, a trial that
  joins the Pareto front (no trial on it dominates or equals it). Every other finished trial
  (a PRUNED one too) counts toward `budget.patience`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field

from studyflow._attrs import INFRA_ERRORS
from studyflow.config import StudyConfig

TOO_MANY_FAILURES = "too many failures"  # stop reasons a resumed run keeps
GRID_RUN = "grid"  # a grid search ran every point of its grid (`ServedStudy._grid_spent`)
UNLIMITED = 2**62  # `budget.n_trials: null`: no limit (the status reports None)
STOP_CALLED = "study.stop()"  # the objective (trial.study.stop()), a driver's callback or the sampler stopped it
# A stop reason that is not the study file's nor the objective's: the sampler or the server
# itself failed; the driver raises it as a StudyAbortedError.
STUDY_FAILED = "study failed: "
# The study's system attribute holding its runs' active seconds so far (for `timeout_s`).
ACTIVE_S_ATTR = "studyflow:active_s"


@dataclass
class Budget:
    """The counts and stop rules of one served study."""

    config: StudyConfig
    n_trials: int
    n_complete: int = 0
    n_pruned: int = 0
    n_fail: int = 0
    n_cached: int = 0  # answered from the trial store, not run
    n_resumed: int = 0  # found in the journal when the study opened
    n_objective_fail: int = 0
    n_objective_fail_first10: int = 0
    best_value: float | None = None
    best_number: int | None = None
    front: list[tuple[float, ...]] = field(default_factory=list)  # several objectives: the Pareto front, minimized
    since_improvement: int = 0
    stop_reason: str | None = None
    opened: float = field(default_factory=time.monotonic)
    active_before_s: float = 0.0  # the earlier runs' active time (a resumed study)
    recent_errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.n_complete + self.n_pruned

    def stopped(self) -> bool:
        """Whether the study stops: a stop rule fired, the budget is spent, or time is up."""
        timeout = self.config.budget.timeout_s
        if self.stop_reason is None:
            if self.finished >= self.n_trials:  # a grid smaller than n_trials: its every point ran
                grid_ran = self.config.sampler.name == "grid" and self.n_trials < (self.config.budget.n_trials or UNLIMITED)
                self.stop_reason = GRID_RUN if grid_ran else "n_trials"
            elif timeout is not None and self.active_s() > timeout:
                self.stop_reason = "timeout_s"
        return self.stop_reason is not None

    def active_s(self) -> float:
        """Seconds the study has been served, over all its runs (not the time between them)."""
        return self.active_before_s + time.monotonic() - self.opened

    def reopen(self) -> None:
        """A resumed run decides afresh, unless the journal's failures already stop it."""
        if self.stop_reason is not None and not self.stop_reason.startswith(TOO_MANY_FAILURES):
            self.stop_reason = None

    def ends_in(self) -> float | None:
        """Seconds until `budget.timeout_s`: a loop starts none of its trials after that."""
        timeout = self.config.budget.timeout_s
        return None if timeout is None else timeout - self.active_s()

    def patience_allows(self, in_flight: int, loops: int) -> bool:
        """Whether one more trial could finish before patience ends the study."""
        patience = self.config.budget.patience
        return patience is None or in_flight < max(loops, patience - self.since_improvement)

    def count(self, number: int, state: str, values: list[float] | None, error: str | None,
              feasible: bool = True) -> None:
        """Count a finished trial (in the order outcomes arrive) and apply the stop rules."""
        if state == "COMPLETE":
            self.n_complete += 1
            self._track_best(number, values, feasible)
        elif state == "PRUNED":
            self.n_pruned += 1
            self.since_improvement += 1
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

    def _track_best(self, number: int, values: list[float] | None, feasible: bool) -> None:
        directions = self.config.study_directions
        if values is None or not feasible:
            self.since_improvement += 1
        elif len(directions) > 1:
            self._track_front([-v if d == "maximize" else v for v, d in zip(values, directions)])
        elif self.best_value is None or (
                values[0] > self.best_value if directions[0] == "maximize" else values[0] < self.best_value):
            self.best_value, self.best_number = values[0], number
            self.since_improvement = 0
        else:
            self.since_improvement += 1

    def _track_front(self, point: list[float]) -> None:
        """A trial of several objectives improves the study when it joins the Pareto front."""
        if any(all(q <= p for q, p in zip(other, point)) for other in self.front):
            self.since_improvement += 1
            return
        self.front = [other for other in self.front if not all(p <= q for p, q in zip(point, other))]
        self.front.append(tuple(point))
        self.since_improvement = 0

    def _check_failures(self) -> None:
        limit = self.config.budget.max_failures
        n = self.n_objective_fail
        if limit is not None:
            if n > limit:
                self.stop_reason = f"{TOO_MANY_FAILURES}: {n} > budget.max_failures={limit}"
            return
        total = self.finished + n
        if self.n_objective_fail_first10 >= 10 and self.finished == 0:
            self.stop_reason = (f"{TOO_MANY_FAILURES}: the first 10 trials all failed "
                                f"(set budget.max_failures to allow more)")
        elif total >= 10 and n > total / 2:
            self.stop_reason = (f"{TOO_MANY_FAILURES}: {n} of {total} trials failed "
                                f"(more than half; set budget.max_failures to allow more)")

    def counts(self) -> dict[str, object]:
        """The status fields the budget owns."""
        return {
            "n_trials": None if self.n_trials >= UNLIMITED else self.n_trials,
            "complete": self.n_complete,
            "pruned": self.n_pruned,
            "failed": self.n_objective_fail,  # the objective's; `lost`: with a worker or a stopped run
            "lost": self.n_fail - self.n_objective_fail,
            "cached": self.n_cached,
            "resumed": self.n_resumed,
            "best_value": self.best_value,
            "best_number": self.best_number,
            "stop_reason": self.stop_reason,
            "errors": list(self.recent_errors),
        }
