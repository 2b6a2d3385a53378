"""When a received outcome is told to Optuna: at once (`async`) or in a fixed order (`reproducible`).

Outcomes are *received* when a worker tells (or the store answers) and *applied* to the Optuna
study when the scheduling mode allows:

- `async` (window 0): at once, so each ask sees whatever has finished;
- `reproducible` with window c: in trial order, and the outcome of trial j only just before
  trial j + c is asked. Trial i is then sampled seeing exactly trials 0..i-c complete and
  i-c+1..i-1 running, whatever the worker count and timing, so a seed gives the same trials on
  1 or 8 workers. Until applied, an outcome's user attributes are already in the journal and
  a COMPLETE result is on its way to the trial store; a crash in between re-runs that trial.

Invariant: outcomes are applied in increasing trial number within each call, and under a
window never past a trial that is still in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

import optuna
from optuna.trial import TrialState

from studyflow._compat import stop_called
from studyflow._compat import tell


@dataclass
class Outcome:
    trial: optuna.Trial
    state: str
    values: list[float] | None
    cached: bool = False
    feasible: bool = True  # every constraint <= 0 (or none): it may be the best


@dataclass
class Ordering:
    study: optuna.Study
    window: int  # 0: async; c: reproducible with window c
    received: dict[int, Outcome] = field(default_factory=dict)  # {number: not yet applied}
    # a tell's `after_trial` called `study.stop()` (Optuna's BruteForceSampler once its space is
    # spent, a user's sampler): the served study stops as `optimize()` would (`take_stop_asked`)
    stop_asked: bool = False

    def receive(self, outcome: Outcome) -> None:
        self.received[outcome.trial.number] = outcome

    def blocks(self, next_number: int, in_flight: Iterable[int]) -> bool:
        """Reproducible: trial `next_number` waits until every trial up to it - c has finished."""
        horizon = next_number - self.window
        return any(n <= horizon for n in in_flight)

    def apply_received(self, in_flight: Callable[[], Iterable[int]], upto: int | None = None) -> None:
        """Tell Optuna the received outcomes the scheduling mode lets the sampler see now:
        all of them (async), or under a window those up to `upto` that no in-flight trial
        precedes (reproducible, just before an ask; without `upto` nothing)."""
        if not self.window:
            for number in sorted(self.received):
                self._apply(self.received.pop(number))
            return
        if upto is None:
            return
        flying = set(in_flight())
        for number in sorted(self.received):
            if number > upto or any(n < number for n in flying):
                break
            self._apply(self.received.pop(number))

    def take_stop_asked(self) -> bool:
        """Whether a tell asked the study to stop since this was last asked."""
        asked, self.stop_asked = self.stop_asked, False
        return asked

    def _apply(self, outcome: Outcome) -> None:
        apply(self.study, outcome)
        self.stop_asked |= stop_called(self.study)

    def apply_all(self) -> None:
        """At the end of a study (or a stop), every received outcome goes to the journal."""
        for number in sorted(self.received):
            self._apply(self.received.pop(number))


def apply(study: optuna.Study, outcome: Outcome) -> None:
    """Tell the study one outcome."""
    if outcome.state == "COMPLETE":
        tell(study, outcome.trial, values=outcome.values)
    else:
        tell(study, outcome.trial, state=TrialState[outcome.state])
