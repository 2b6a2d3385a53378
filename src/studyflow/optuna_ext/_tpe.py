"""Optuna's TPE sampler, doing its per-trial Python work once per trial instead of once per ask.

TPE's ask splits the trials into a good ("below") and a bad ("above") group, encodes their
parameters and builds a Parzen estimator from each: Python work over every trial on every ask,
growing with the history, while the workers of a study with short trials wait for the study
server. Here a finished trial (which never changes) is encoded once, the split of the finished
trials is a numpy sort per history, and the "below" estimator is built once per history: the
study server serves a batch's asks after all of its tells, so they share it. Under Optuna's
default constant liar the running trials (other than the one asked for) join "above" in
trial-number order: they are encoded per ask and inserted at their numbers, which is the order
Optuna builds them in. Candidates are drawn from the sampler's own random state in ask order,
so the trials are the ones `optuna.samplers.TPESampler` proposes for the same sequence of asks
and tells (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._compat import ParzenEstimator
from studyflow._compat import default_gamma
from studyflow._compat import default_gamma_multiobjective
from studyflow._compat import infeasible_trial_score
from studyflow._compat import split_trials
from studyflow._compat import storage_of
from studyflow._compat import study_id_of
from studyflow._compat import trial_id_of

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_Space = frozenset[tuple[str, BaseDistribution]]


def _grown(array: np.ndarray, size: int, fill: Any) -> np.ndarray:
    """`array`, with room for index `size - 1` (doubling, so growing costs O(1) per trial)."""
    if size <= len(array):
        return array
    grown = np.full((max(size, 2 * len(array)),) + array.shape[1:], fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _trials(study: Study, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    """The study's trials in `states`, all of them, as Optuna's TPE reads them (from the
    storage, indexed in the server): under a `HyperbandPruner` the sampler is handed a view
    whose `get_trials` shows one bracket's trials only, which TPE does not go by."""
    return storage_of(study).get_all_trials(study_id_of(study), deepcopy=False, states=states)


@dataclass
class _Finished:
    """The finished trials seen so far, by trial number, and what the fast split needs."""

    numbers: set[int] = field(default_factory=set)
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # by number
    value: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_not_plain: int = 0  # pruned or infeasible: the split needs Optuna's own rules

    def add(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """Record the trials not seen before; return them. `trials` (every finished trial, by
        number) is searched from its first unseen trial on, not scanned whole per ask."""
        new = [t for t in trials[self._first_unseen(trials):] if t.number not in self.numbers]
        if len(new) != len(trials) - len(self.numbers):  # not in number order after all
            new = [t for t in trials if t.number not in self.numbers]
        if not new:
            return new
        size = max(t.number for t in new) + 1
        self.seen, self.value = _grown(self.seen, size, False), _grown(self.value, size, np.nan)
        for t in new:
            self.numbers.add(t.number)
            self.seen[t.number] = True
            plain = t.state == TrialState.COMPLETE and infeasible_trial_score(t) <= 0
            self.n_not_plain += not plain
            if plain and t.values is not None and len(t.values) == 1:
                self.value[t.number] = t.values[0]
        return new

    def _first_unseen(self, trials: list[FrozenTrial]) -> int:
        """The index of the first trial not seen before, by bisection: in a list by number
        that holds every seen trial, `trials[:i + 1]` are all seen exactly when as many seen
        numbers are at most `trials[i].number` as there are trials up to it."""
        seen_upto = np.cumsum(self.seen)
        lo, hi = 0, len(trials)
        while lo < hi:
            mid = (lo + hi) // 2
            number = trials[mid].number
            if number < len(seen_upto) and seen_upto[number] == mid + 1 and self.seen[number]:
                lo = mid + 1
            else:
                hi = mid
        return lo


@dataclass
class _Encoded:
    """One search space's params of each finished trial, in TPE's internal representation."""

    names: list[str]
    rows: np.ndarray
    has: np.ndarray  # the trial has every param of the space (else TPE leaves it out)

    def add(self, trials: list[FrozenTrial], space: dict[str, BaseDistribution]) -> None:
        size = max((t.number for t in trials), default=-1) + 1
        self.rows, self.has = _grown(self.rows, size, np.nan), _grown(self.has, size, False)
        for t in trials:
            if space.keys() <= t.params.keys():
                self.has[t.number] = True
                self.rows[t.number] = [space[n].to_internal_repr(t.params[n]) for n in self.names]

    def observations(self, numbers: np.ndarray) -> dict[str, np.ndarray]:
        rows = self.rows[numbers[self.has[numbers]]]
        return {name: rows[:, i] for i, name in enumerate(self.names)}


@dataclass
class _History:
    """What one set of finished trials gives a search space: it never changes until a tell."""

    below: ParzenEstimator
    above: dict[str, np.ndarray]  # encoded params of the finished "above" trials, by number
    above_numbers: np.ndarray
    above_without_running: ParzenEstimator | None = None


class CachedFitTPESampler(TPESampler):
    """`TPESampler` that encodes each finished trial once and splits and fits once per history."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._study_key: tuple[int, int] | None = None
        self._finished = _Finished()
        self._encoded: dict[_Space, _Encoded] = {}
        self._n_history = -1
        self._split: tuple[np.ndarray, np.ndarray] | None = None
        self._histories: dict[_Space, _History] = {}
        self._running_ids: set[int] | None = None  # None: not yet read from the storage

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        super().before_trial(study, trial)
        self._for_study(study)
        if self._running_ids is not None:
            self._running_ids.add(trial_id_of(trial))

    def _for_study(self, study: Study) -> None:
        """Forget what was cached when this sampler starts serving another study."""
        key = (id(storage_of(study)), study_id_of(study))
        if self._study_key != key:
            self._study_key = key
            self._finished, self._encoded, self._n_history = _Finished(), {}, -1
            self._running_ids = None

    def _sample(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._gamma is None:  # as Optuna picks it
            self._gamma = default_gamma if len(study.directions) <= 1 else default_gamma_multiobjective
        history = self._history(study, search_space)
        running = self._running(study, trial) if self._constant_liar else []
        mpe_below = history.below
        mpe_above = self._above(study, search_space, history, running)
        samples = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        ret = TPESampler._compare(samples, self._compute_acquisition_func(samples, mpe_below, mpe_above))
        return {name: dist.to_external_repr(ret[name]) for name, dist in search_space.items()}

    def _history(self, study: Study, search_space: dict[str, BaseDistribution]) -> _History:
        self._for_study(study)
        finished = _trials(study, _FINISHED)
        space = frozenset(search_space.items())
        # Finished trials are only ever added, never changed: their count names the history.
        if len(finished) != self._n_history:
            new = self._finished.add(finished) if len(finished) != len(self._finished.numbers) else []
            for key, encoded in self._encoded.items():
                encoded.add(new, dict(key))
            self._n_history, self._split, self._histories = len(finished), None, {}
        if space not in self._encoded:
            names = list(search_space)
            encoded = _Encoded(names, np.zeros((0, len(names))), np.zeros(0, dtype=bool))
            encoded.add(finished, search_space)
            self._encoded[space] = encoded
        if space not in self._histories:
            below, above = self._split_numbers(study, finished)
            encoded = self._encoded[space]
            above = above[encoded.has[above]]
            self._histories[space] = _History(
                below=self._estimator(study, search_space, encoded.observations(below), True),
                above=encoded.observations(above),
                above_numbers=above,
            )
        return self._histories[space]

    def _running(self, study: Study, trial: FrozenTrial) -> list[FrozenTrial]:
        """The running trials other than `trial`, by number: those this sampler saw asked (every
        ask calls `before_trial`) and still running, not a scan of every trial per ask."""
        self._for_study(study)
        if self._running_ids is None:  # trials may have been running before this sampler came
            self._running_ids = {
                trial_id_of(t) for t in _trials(study, (TrialState.RUNNING,))
            }
        running = []
        for trial_id in list(self._running_ids):
            t = storage_of(study).get_trial(trial_id)
            if t.state != TrialState.RUNNING:
                self._running_ids.discard(trial_id)
            elif t.number != trial.number:
                running.append(t)
        return sorted(running, key=lambda t: t.number)

    def _split_numbers(self, study: Study, finished: list[FrozenTrial]) -> tuple[np.ndarray, np.ndarray]:
        """The numbers of the "below" and "above" finished trials, each in number order."""
        if self._split is None:
            assert self._gamma is not None
            n_below = self._gamma(len(finished))
            if len(study.directions) == 1 and self._finished.n_not_plain == 0:
                # All complete and feasible: Optuna's split is a stable sort by value.
                numbers = np.flatnonzero(self._finished.seen)
                values = self._finished.value[numbers]
                if study.direction == StudyDirection.MAXIMIZE:
                    values = -values
                order = np.argsort(values, kind="stable")
                n_below = min(n_below, len(numbers))
                self._split = (np.sort(numbers[order[:n_below]]), np.sort(numbers[order[n_below:]]))
            else:
                below, above = split_trials(study, finished, n_below)
                self._split = (
                    np.array([t.number for t in below], dtype=np.int64),
                    np.array([t.number for t in above], dtype=np.int64),
                )
        return self._split

    def _above(
        self,
        study: Study,
        search_space: dict[str, BaseDistribution],
        history: _History,
        running: list[FrozenTrial],
    ) -> ParzenEstimator:
        """The "above" estimator: the finished "above" trials plus the running ones, by number."""
        if not running:
            if history.above_without_running is None:
                history.above_without_running = self._estimator(study, search_space, history.above, False)
            return history.above_without_running
        running = [t for t in running if search_space.keys() <= self._get_params(t, study).keys()]
        encoded = self._get_internal_repr(running, search_space, study)
        at = np.searchsorted(history.above_numbers, [t.number for t in running])
        merged = {name: np.insert(history.above[name], at, encoded[name]) for name in search_space}
        return self._estimator(study, search_space, merged, False)

    def _estimator(
        self,
        study: Study,
        search_space: dict[str, BaseDistribution],
        observations: dict[str, np.ndarray],
        handle_below: bool,
    ) -> ParzenEstimator:
        """`TPESampler._build_parzen_estimator`, from encoded params instead of trials."""
        if handle_below and len(study.directions) > 1:
            n_below = len(next(iter(observations.values()))) if observations else 0
            return self._parzen_estimator_cls(
                observations, search_space, self._parzen_estimator_parameters, np.ones(n_below)
            )
        return self._parzen_estimator_cls(observations, search_space, self._parzen_estimator_parameters)
