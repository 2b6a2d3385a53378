"""Random-search trials drawn in one step and created in one journal record.

`Study.ask(space)` writes a new trial as one record, then one per parameter, then the server
adds its key: each record JSON-encoded and replayed by Optuna's `JournalStorage`, with the
sampler's hooks around them; and `RandomSampler` builds a search-space transform for every
parameter of every trial. In a random search of instant trials that was a large share of the
server's work per trial. A `RandomSampler` looks at neither the history nor the trial, so here the
server draws every parameter from the sampler's own random state in one call (the same numbers,
in the same order, as its per-parameter draws) and writes the trial with its parameters, key and
worker in one record, as `Study.add_trial` does. The journal reads the same to Optuna, and a seed gives
the same parameters as `Study.ask` (tests/test_journal.py checks both).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution

from studyflow._compat import SearchSpaceTransform
from studyflow._compat import sampler_rng
from studyflow._compat import storage_of
from studyflow._compat import study_id_of
from studyflow._compat import untransform_numerical_param


# Spaces of up to this many transformed columns draw one scalar `uniform` per column: numpy's
# legacy `uniform` computes every element of an array call with the same one-number routine,
# so the numbers are the same, without the array call's checks (a third of the cost).
SCALAR_DRAWS_UP_TO = 4


class RandomInOneRecord:
    """New trials of a study whose sampler is a plain `RandomSampler`, for a fixed space."""

    def __init__(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> None:
        self.study = study
        self.space = space
        if not space:
            return
        self._transform = SearchSpaceTransform(space)  # what RandomSampler builds per parameter
        self._low, self._high = self._transform.bounds[:, 0], self._transform.bounds[:, 1]
        self._bounds = list(zip(self._low.tolist(), self._high.tolist()))
        self._columns = [(name, dist, [int(c) for c in columns]) for (name, dist), columns
                         in zip(space.items(), self._transform.column_to_encoded_columns)]

    @staticmethod
    def applies(study: optuna.Study, space: dict[str, BaseDistribution]) -> bool:
        """A plain RandomSampler (a subclass may sample otherwise) and no single-valued
        parameter (`Trial._suggest` fills those without drawing a number). An empty space (a
        define-by-run objective) too: `Study.ask()` then draws nothing, and the trial's
        parameters are journaled as the objective suggests them."""
        return type(study.sampler) is optuna.samplers.RandomSampler and not any(d.single() for d in space.values())

    def sample(self) -> dict[str, Any]:
        """The parameters `Study.ask(space)` would draw next, if no WAITING trial (an enqueued
        retry, which `Study.ask` pops instead) is left."""
        if not self.space:
            return {}
        rng = sampler_rng(self.study.sampler)
        if len(self._bounds) > SCALAR_DRAWS_UP_TO:
            return self._transform.untransform(rng.uniform(self._low, self._high))
        drawn = [rng.uniform(low, high) for low, high in self._bounds]
        # as `untransform` reads them: a categorical takes its highest column (the first of
        # equals), a number is mapped back from its one column
        return {name: dist.to_external_repr(max(range(len(columns)), key=lambda i: drawn[columns[i]]))
                if isinstance(dist, CategoricalDistribution)
                else untransform_numerical_param(drawn[columns[0]], dist, True)
                for name, dist, columns in self._columns}

    def create(self, params: dict[str, Any], system_attrs: dict[str, Any]) -> optuna.Trial:
        """A new RUNNING trial with these parameters and system attributes, in one record."""
        study = self.study
        return optuna.Trial(study, storage_of(study).create_running_trial(study_id_of(study), params, self.space,
                                                                          system_attrs))
