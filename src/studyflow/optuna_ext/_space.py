"""Turn a study file's search space, sampler and pruner into Optuna objects."""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import asdict
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution

from studyflow._hashing import canonical_json
from studyflow._imports import NotImportable
from studyflow._imports import import_named
from studyflow.config import ParamSpec
from studyflow.config import StudyConfig
from studyflow.errors import ConfigError
from studyflow.optuna_ext._grid import IncrementalGridSampler
from studyflow.optuna_ext._tpe import CachedFitTPESampler

# Samplers whose proposals do not depend on finished trials: prefetching many costs nothing.
HISTORY_FREE_SAMPLERS = ("random", "grid", "qmc")


def distribution(spec: ParamSpec) -> BaseDistribution:
    if spec.type == "categorical":
        return CategoricalDistribution(list(spec.choices or []))
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)


def distributions(cfg: StudyConfig) -> dict[str, BaseDistribution]:
    return {name: distribution(spec) for name, spec in cfg.search_space.items()}


def grid_values(spec: ParamSpec) -> list[Any]:
    """Every value a grid sampler visits for one parameter."""
    if spec.type == "categorical":
        return list(spec.choices or [])
    step = spec.step if spec.step is not None else 1
    if spec.type == "int":
        return list(range(int(spec.low), int(spec.high) + 1, int(step)))
    n = int(np.floor((spec.high - spec.low) / step + 1e-9)) + 1
    return [float(spec.low + i * step) for i in range(n)]


def grid_size(cfg: StudyConfig) -> int:
    sizes = [len(grid_values(spec)) for spec in cfg.search_space.values()]
    return int(np.prod(sizes)) if sizes else 0


def make_sampler(cfg: StudyConfig, resumed_trials: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler. A resumed study's seed is shifted by the trials already run, so a
    seeded sampler does not propose the first trials' parameters again after every restart
    (and a resume from the same journal still continues the same way). Not the grid's nor
    QMC's: the seed fixes the grid's shuffle or the scrambled sequence, and the journal keeps
    the place in it (the trials' grid ids; QMC's last sample id, a study attribute)."""
    s = cfg.sampler
    if s.seed is not None and resumed_trials and s.name not in ("grid", "qmc"):
        s = type(s)(name=s.name, seed=(s.seed + 1_000_003 * resumed_trials) % 2**32, options=s.options)
    opts = dict(s.options)
    label = cfg.source or cfg.name or "<study>"
    if s.name == "gp" and importlib.util.find_spec("torch") is None:  # else it fails at the first fitted ask
        raise ConfigError(label, "sampler.name", "gp needs PyTorch: pip install 'studyflow[gp]'")
    cls: Any = _SAMPLERS.get(s.name) or class_named(s.name, optuna.samplers.BaseSampler, label, "sampler")
    if s.seed is not None and not _takes(cls, "seed"):
        raise ConfigError(label, "sampler.seed", f"{s.name} takes no seed (leave sampler.seed out)")
    seeded = {} if s.seed is None else {"seed": s.seed}
    try:
        if s.name == "grid":
            return cls({name: grid_values(spec) for name, spec in cfg.search_space.items()}, **seeded, **opts)
        return cls(**seeded, **opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(label, "sampler.options", str(exc)) from exc


# The samplers and pruners by their short names in a study file: Optuna's (tpe and grid as
# studyflow's subclasses of them)
_SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": CachedFitTPESampler, "grid": IncrementalGridSampler,
    "random": optuna.samplers.RandomSampler, "qmc": optuna.samplers.QMCSampler,
    "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler, "nsga3": optuna.samplers.NSGAIIISampler,
    "bruteforce": optuna.samplers.BruteForceSampler,
}
_PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner, "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner, "wilcoxon": optuna.pruners.WilcoxonPruner,
}


def class_named(path: str, base: type, label: str, section: str) -> Any:
    """The class a study file names as 'module:Class' (a user's own sampler or pruner, or one of
    Optuna's by its path), imported here (the driver's check, and the study server); else one
    line naming `<section>.name`."""
    try:
        found = import_named(path)
    except NotImportable as exc:
        raise ConfigError(label, f"{section}.name", str(exc)) from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(label, f"{section}.name", f"{path!r} is not an Optuna {section} "
                                                   f"(a subclass of {base.__module__}.{base.__qualname__})")
    return found


def _takes(cls: type, name: str) -> bool:
    params = inspect.signature(cls).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    label = cfg.source or cfg.name or "<study>"
    cls = _PRUNERS.get(p.name) or class_named(p.name, optuna.pruners.BasePruner, label, "pruner")
    try:
        return cls(**dict(p.options))
    except (TypeError, ValueError) as exc:
        raise ConfigError(label, "pruner.options", str(exc)) from exc


# The sampler and pruner sections (with the space a grid is built from) already built in this
# process: building them again would only check the same options again.
_CHECKED: set[str] = set()


def check_sampler_options(cfg: StudyConfig) -> None:
    """Build the sampler and pruner so bad options fail before any cluster starts; once per
    process for the same sections (a rerun of the study, a benchmark's repeats). Not kept for
    gp, whose check also asks whether PyTorch is installed."""
    key = canonical_json([asdict(cfg.sampler), asdict(cfg.pruner), cfg.to_dict()["search_space"]])
    if key in _CHECKED:
        return
    make_sampler(cfg)
    make_pruner(cfg)
    if cfg.sampler.name != "gp":
        _CHECKED.add(key)

