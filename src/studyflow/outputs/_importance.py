"""Parameter importances for the study card (Optuna's PED-ANOVA), without plotly.

Importing `optuna.importance` imports scikit-learn when it is installed (Optuna's fANOVA
module loads it at import): about 1 s of a 2.5 s report, though PED-ANOVA needs none of it.
So the driver asks a worker that has scikit-learn loaded already (an sklearn objective's
workers do) for the scores (`scores_if_loaded`) and writes them beside the trials
(`IMPORTANCES_FILE`); the report draws them when they describe the same completed trials, and
computes them itself otherwise. The same function computes them either way.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import optuna

if TYPE_CHECKING:  # a worker asked `scores_are_cheap` imports none of these for it
    import pandas as pd
    import pyarrow as pa

    from studyflow.config import StudyConfig

IMPORTANCES_FILE = "importances.json"
MIN_TRIALS_FOR_IMPORTANCE = 5
Scores = dict[str, float] | str  # {param: normalised importance}, or why there are none


def param_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c.startswith("params_")]


def complete(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["state"] == "COMPLETE"].sort_values("number")


def why_no_scores(trials: pd.DataFrame | pa.Table) -> str | None:
    """Why these trials (a DataFrame, or the Arrow table a driver gets) have no importances
    (too few completed trials or parameters), if so: known without Optuna's importance module,
    so nobody is asked to compute them."""
    if hasattr(trials, "column_names"):  # Arrow: counted without pandas
        n_done = trials.column("state").to_pylist().count("COMPLETE")
        return _why_none(n_done, sum(name.startswith("params_") for name in trials.column_names))
    return _why_none(len(complete(trials)), len(param_columns(trials)))


def _why_none(n_done: int, n_params: int) -> str | None:
    if n_done < MIN_TRIALS_FOR_IMPORTANCE or not n_params:
        return (f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials and one "
                f"parameter; this study has {n_done} completed trial(s).")
    if n_params < 2:
        return "Parameter importances need at least two parameters."
    return None


def importance_scores(trials: pd.DataFrame, cfg: StudyConfig) -> Scores:
    """PED-ANOVA importances of the completed trials (of objective 0 when there are several)."""
    done, params = complete(trials), param_columns(trials)
    reason = _why_none(len(done), len(params))
    if reason is not None:
        return reason
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # no "new study created" line
    value = None
    if len(cfg.study_directions) > 1:  # PED-ANOVA takes a target's low values as its best
        sign = -1.0 if cfg.study_directions[0] == "maximize" else 1.0
        value = lambda t: sign * t.values[0]  # noqa: E731
    try:  # a value its distribution refuses costs the card its importances, not the card
        study = _in_memory_study(done, params, cfg)
        with warnings.catch_warnings():  # that a target's low values are taken as its best: they are
            warnings.filterwarnings("ignore", message=".*low `target` values", category=UserWarning)
            scores = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=value)
    except (RuntimeError, ValueError) as exc:
        return f"Parameter importances could not be computed: {exc}"
    return {name: float(score) for name, score in scores.items()}


def scores_are_cheap() -> bool:
    """Whether computing the scores here imports no scikit-learn (it is loaded already, or not
    installed): asked of a worker before the trials are shipped to it."""
    return "sklearn" in sys.modules or importlib.util.find_spec("sklearn") is None


def scores_if_loaded(trials: pd.DataFrame | pa.Table, cfg: StudyConfig) -> dict[str, Any] | None:
    """On a worker: what `IMPORTANCES_FILE` holds, when `scores_are_cheap()` there; else None,
    and the report computes them."""
    if not scores_are_cheap():
        return None
    if hasattr(trials, "to_pandas"):  # the driver's Arrow table
        trials = trials.to_pandas()
    scores = importance_scores(trials, cfg)  # in order, most important first: kept as pairs
    return {"complete": _numbers(trials), "scores": scores if isinstance(scores, str) else list(scores.items())}


def stored_scores(stored: dict[str, Any] | None, trials: pd.DataFrame) -> Scores | None:
    """The scores `IMPORTANCES_FILE` holds, if they are of these trials' completed ones."""
    if stored is None or stored.get("complete") != _numbers(trials):
        return None
    scores = stored["scores"]
    return scores if isinstance(scores, str) else {name: float(score) for name, score in scores}


def _numbers(trials: pd.DataFrame) -> list[int]:
    return [int(n) for n in complete(trials)["number"]]


def _in_memory_study(done: pd.DataFrame, params: list[str], cfg: StudyConfig) -> optuna.Study:
    import pandas as pd

    from studyflow.optuna_ext import distribution

    dists = {}
    for col in params:
        name = col.removeprefix("params_")
        if name in cfg.search_space:
            dists[name] = distribution(cfg.search_space[name])
        elif pd.api.types.is_numeric_dtype(done[col]):
            low, high = float(done[col].min()), float(done[col].max())
            dists[name] = optuna.distributions.FloatDistribution(low, high if high > low else low + 1)
        else:
            dists[name] = optuna.distributions.CategoricalDistribution(sorted(done[col].dropna().astype(str).unique()))
    value_cols = cfg.value_columns
    study = optuna.create_study(directions=cfg.study_directions)
    trials = []
    for row in done.to_dict("records"):
        present = {name: _as_choice(_native(row[c]), dists[name]) for c in params
                   if not _missing(row[c]) for name in [c.removeprefix("params_")]}
        trials.append(optuna.trial.create_trial(
            params=present, distributions={k: dists[k] for k in present},
            values=[row[c] for c in value_cols], state=optuna.trial.TrialState.COMPLETE,
        ))
    study.add_trials(trials)
    return study


def _as_choice(value: Any, dist: optuna.distributions.BaseDistribution) -> Any:
    """A categorical value as its distribution holds it. The trials table keeps one type per
    column, so a bool there meets choices made from the column's text ('True'), and a choice of
    a declared mix of None, numbers and text arrives as text ('0.5'): matched by that text."""
    if not isinstance(dist, optuna.distributions.CategoricalDistribution) or any(
            type(value) is type(choice) and value == choice for choice in dist.choices):
        return value
    return {str(choice): choice for choice in dist.choices}.get(str(value), value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
