"""Optuna's grid sampler, without a look at every trial on every tell.

`GridSampler.after_trial` works out the grid points no trial has visited or runs, from every
trial of the study, on every tell, to stop the study once none is left: a grid of n points
costs O(n^2) (5,000 points: 10.5 s of plain Optuna in one process, in memory). Optuna stops
the study only when at most one point is left, so a tell is answered without that look: at
once while the study has fewer trials than the grid has points, else from the points of the
trials that finished since the last tell (a finished trial never changes) and of those still
running. Only for the last point or two does Optuna's own `after_trial` run. Invariant: the
study stops where `GridSampler` stops it, and asks get the same points (tests/test_grid.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import GridSampler
from optuna.storages import JournalStorage
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._attrs import NOT_RUN_ATTR
from studyflow._compat import fresh_trials_view
from studyflow._compat import replayed_trials
from studyflow._compat import storage_of
from studyflow._compat import study_id_of

_OFF = object()  # a trial with no point of this grid
_UNKNOWN = object()


@dataclass
class _Visits:
    """A study's trials as last looked at by `IncrementalGridSampler._left`."""

    looked: int = 0  # trials [0, looked) have been looked at
    open: list[int] = field(default_factory=list)  # the numbers among them not finished then
    visited: set[Any] = field(default_factory=set)  # grid ids of the finished ones on this grid
    visited_points: int = 0  # how many of those are points of the grid
    point_of: dict[int, Any] = field(default_factory=dict)  # an open trial's grid id (or _OFF)


class _ByNumber(Sequence[FrozenTrial]):
    """A journal's replayed trials of one study, by number, without copying them into a list."""

    def __init__(self, trials: dict[int, FrozenTrial], ids: list[int]) -> None:
        self._trials, self._ids = trials, ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, number: Any) -> Any:
        return self._trials[self._ids[number]]


def _trials_by_number(study: Study) -> Sequence[FrozenTrial]:
    storage = storage_of(study)
    if isinstance(storage, JournalStorage):
        trials, ids = replayed_trials(storage)
        return _ByNumber(trials, ids[study_id_of(study)])
    return storage.get_all_trials(study_id_of(study), deepcopy=False)


class IncrementalGridSampler(GridSampler):
    """`GridSampler`, whose tells look only at the trials that may have changed."""

    def __init__(self, search_space: dict[str, Sequence[Any]], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self._points = range(self._n_min_trials)  # the grid ids (a set of a million ints: ~40 MB)
        self._visits: dict[tuple[int, int], _Visits] = {}  # (id of storage, study id) -> visits

    @property
    def param_names(self) -> list[str]:
        """The grid's parameter names."""
        return list(self._param_names)

    def point(self, number: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The parameters and system attributes a new trial numbered `number` gets from this
        sampler (its grid point is its number until the grid's first pass is used up: then
        None, a point drawn at random among those left)."""
        if number >= self._n_min_trials:
            return None
        point = self._all_grids[number]
        return ({name: point[i] for i, name in enumerate(self._param_names)},
                {"search_space": self._search_space, "grid_id": number})

    def unstarted_points(self, study: Study) -> int | None:
        """How many grid points no trial has started (none finished or running with it); None
        while the study has fewer trials than the grid has points (then at least one is
        unstarted: each trial holds one point)."""
        trials = _trials_by_number(study)
        if len(trials) < self._n_min_trials:
            return None
        return self._left(self._visits_of(study), trials)[0]

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        # Optuna stops when none, or only this trial's, is left of the points no trial has
        # started (else of those no trial has finished): never while two or more are left, nor
        # while one is left to start and this trial, running (told before its state is
        # written), holds a point of this grid (so not that one)
        trials = _trials_by_number(study)
        if self._n_min_trials - len(trials) >= 2:  # each trial holds one point
            return
        visits = self._visits_of(study)
        unstarted, unfinished = self._left(visits, trials)
        if unstarted >= 2 or (unstarted == 1 and self._point(visits, trial) is not _OFF) or (
                unstarted == 0 and unfinished >= 2):
            return
        super().after_trial(study, trial, state, values)

    def _get_unvisited_grid_ids(self, study: Study) -> list[int]:
        """Optuna's (the points no trial has finished or runs; else those no trial has
        finished), from the visits `_left` counts, where a trial the server gave back unrun
        (`NOT_RUN_ATTR`: held by a loop when the study stopped) visits no point: its point is
        still to run. Optuna asks it for a trial past the grid's first pass and, in
        `after_trial`, for the last point or two."""
        visits = self._visits_of(study)
        running = self._look(visits, _trials_by_number(study))
        unvisited = set(self._points) - visits.visited - running  # built as Optuna builds it: its order, its draws
        return list(unvisited or set(self._points) - visits.visited)

    def _visits_of(self, study: Study) -> _Visits:
        return self._visits.setdefault((id(storage_of(study)), study_id_of(study)), _Visits())

    def _left(self, visits: _Visits, trials: Sequence[FrozenTrial]) -> tuple[int, int]:
        """How many points no finished or running trial has, and how many no finished trial
        has: the sizes of the two sets `_get_unvisited_grid_ids` chooses between."""
        running = self._look(visits, trials)
        unfinished = self._n_min_trials - visits.visited_points
        running_points = sum(1 for point in running if point in self._points and point not in visits.visited)
        return unfinished - running_points, unfinished

    def _look(self, visits: _Visits, trials: Sequence[FrozenTrial]) -> set[Any]:
        """Bring `visits` up to date from the trials that may have changed since the last look
        (those open then, and the new ones): the points of the finished ones join the visited
        (not a trial given back unrun). Returns the points of the running ones."""
        still_open, running = [], set()
        for number in itertools.chain(visits.open, range(visits.looked, len(trials))):
            trial = trials[number]
            point = self._point(visits, trial)
            if trial.state.is_finished():
                visits.point_of.pop(number, None)
                if point is not _OFF and point not in visits.visited and not trial.system_attrs.get(NOT_RUN_ATTR):
                    visits.visited.add(point)
                    visits.visited_points += point in self._points
                continue
            still_open.append(number)
            if trial.state == TrialState.RUNNING and point is not _OFF:
                running.add(point)
        visits.open, visits.looked = still_open, len(trials)
        return running

    def _point(self, visits: _Visits, trial: FrozenTrial) -> Any:
        """The trial's grid id if it is on this grid (as Optuna decides it), else `_OFF`; kept
        once known (`before_trial` sets a trial's grid id and search space once, at its ask)."""
        point = visits.point_of.get(trial.number, _UNKNOWN)
        if point is not _UNKNOWN:
            return point
        attrs = trial.system_attrs
        if "grid_id" not in attrs:
            return _OFF  # not yet (or never: an enqueued trial)
        point = attrs["grid_id"] if self._same_search_space(attrs["search_space"]) else _OFF
        visits.point_of[trial.number] = point
        return point


class GridInOneRecord:
    """New trials of a grid search over a fixed space, created in one record each, as
    `RandomInOneRecord` creates a random search's: `Study.ask(space)` writes a trial, then the
    sampler's two system attributes, then one record per parameter, each replayed by Optuna. A
    trial numbered below the grid's size has its number as its grid point, so all of it is
    known before it exists. The journal reads the same to Optuna (tests/test_grid.py)."""

    def __init__(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> None:
        self.study, self.space = study, space
        self._sampler: IncrementalGridSampler = study.sampler  # type: ignore[assignment]

    @staticmethod
    def applies(study: optuna.Study, space: dict[str, BaseDistribution]) -> bool:
        """Our grid sampler, over exactly the space's names (else `Study.ask` raises, or
        suggests names of its own)."""
        sampler = study.sampler
        return type(sampler) is IncrementalGridSampler and bool(space) and set(space) == set(sampler.param_names)

    def sample(self) -> dict[str, Any] | None:
        """The parameters `Study.ask(space)` would give the next trial, in the space's order;
        None past the grid's first pass (`Study.ask` then draws a point)."""
        point = self._next()
        return None if point is None else {name: point[0][name] for name in self.space}

    def create(self, params: dict[str, Any], system_attrs: dict[str, Any]) -> optuna.Trial:
        """The next trial, RUNNING, with `sample`'s parameters and, first, the sampler's system attributes."""
        point = self._next()
        assert point is not None, "sampled past the grid's first pass"
        study = self.study
        fresh_trials_view(study)
        return optuna.Trial(study, storage_of(study).create_running_trial(
            study_id_of(study), params, self.space, {**point[1], **system_attrs}))

    def _next(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The sampler's point for the next trial, numbered by the study's trial count."""
        return self._sampler.point(storage_of(self.study).get_n_trials(study_id_of(self.study)))
