"""A user's own Optuna sampler, named in a study file as `sf_samplers:Stepping`."""

from __future__ import annotations

import optuna


class Stepping(optuna.samplers.BaseSampler):
    """Proposes each float at `start + number * step` of its range (wrapping), nothing learnt:
    which trial got which value shows that this sampler, and not another, proposed it."""

    def __init__(self, start: float = 0.0, step: float = 0.125) -> None:
        self.start, self.step = start, step

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        fraction = (self.start + trial.number * self.step) % 1.0
        return param_distribution.low + fraction * (param_distribution.high - param_distribution.low)
