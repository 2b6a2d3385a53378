"""What the objective receives on a worker: a trial that behaves like `optuna.Trial`.

Parameters from the study file's search space arrive with the ask, so `trial.suggest_*` for
them answers locally; so do the sampler's relative parameters (a multivariate sampler's joint
sample over the space every finished trial shares, or that space drawn at the ask for a sampler
that draws each parameter on its own), when the suggest asks for the same distribution: they
travel back with the tell. Any other name is suggested define-by-run, one
RPC to the study server each. User attributes, constraints and artifact records travel with the tell.
`trial.study` is a read-only view of the study the server holds, fetched when read, and
`trial.storage` records what Optuna's helpers write to the trial (both in `_study_view`).
"""

from __future__ import annotations

import asyncio
import copy
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from distributed import get_worker
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.distributions import json_to_distribution

from studyflow._attrs import CONSTRAINT_PREFIX
from studyflow._attrs import STUDYFLOW_PREFIX
from studyflow._compat import sync
from studyflow.worker._study_view import StudyView
from studyflow.worker._study_view import WorkerTrialStorage

_TRIAL_API = ("suggest_float/int/categorical, report, should_prune, set_user_attr, set_constraint,"
              " params, distributions, user_attrs, constraints, number, datetime_start, study;"
              " and studyflow's key, seed, artifact_dir")


class ServerConnection:
    """Calls the study server's handlers from a task thread on a worker."""

    def __init__(self, study_id: str) -> None:
        self.worker = get_worker()
        self.address = self.worker.address
        self.study_id = study_id
        self._view: StudyView | None = None

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        handler = getattr(self.worker.scheduler, f"studyflow_{op}")
        return sync(self.worker.loop, handler, study_id=self.study_id, **kwargs)

    def submit(self, op: str, **kwargs: Any) -> Future:
        """Start a call and return at once: the trial loop runs its next trial meanwhile."""
        handler = getattr(self.worker.scheduler, f"studyflow_{op}")
        return asyncio.run_coroutine_threadsafe(
            handler(study_id=self.study_id, **kwargs), self.worker.loop.asyncio_loop
        )

    def study_view(self) -> StudyView:
        """One view per loop: it keeps what never changes (name, directions) between trials."""
        if self._view is None:
            self._view = StudyView(self)
        return self._view


class RemoteTrial(optuna.trial.Trial):
    """The worker-side twin of `optuna.Trial` for one running trial.

    A subclass of `optuna.Trial` (its constructor, which needs the study, is not called), so
    code that checks `isinstance(trial, optuna.Trial)`, such as
    `optuna.artifacts.upload_artifact`, takes it for one. Every public member of `optuna.Trial`
    is answered here or by the study server; anything else raises an error naming studyflow.
    """

    def __init__(
        self,
        conn: ServerConnection,
        number: int,
        params: dict[str, Any],
        data: Any = None,
        settings: dict[str, Any] | None = None,
        key: str = "",
        seed: int = 0,
        artifact_dir: str | None = None,
        distributions: dict[str, str] | None = None,
        datetime_start: str | None = None,
        relative: dict[str, Any] | None = None,
        relative_distributions: dict[str, str] | None = None,
    ) -> None:
        self._conn = conn
        self._number = number
        self._trial_id = None  # no storage id here: Optuna's helpers pass it to `storage`, unread
        self._params = dict(params)
        # Optuna's JSON per parameter, decoded when first read (most objectives never do)
        self._distribution_json = dict(distributions or {})
        self._decoded: dict[str, BaseDistribution] = {}
        self._relative = dict(relative or {})
        self._relative_json = dict(relative_distributions or {})
        self.suggested: list[list[Any]] = []  # answered from `_relative`, not yet on the server
        self._datetime_start = datetime_start
        self.key = key  # the trial's content address in the trial store
        self.seed = seed  # derived from the key: seed your model with it for reproducible trials
        self._artifact_dir = artifact_dir
        self.used_artifact_dir = False  # told to the server: it moves the staged files only then
        self._user_attrs: dict[str, Any] = {}
        self._system_attrs: dict[str, Any] = {}  # constraints and artifact records, for the tell
        self.data = data
        self.settings = dict(settings or {})

    def __getattr__(self, name: str) -> Any:
        """Only reached for what this class lacks: say so, and what there is instead."""
        if name.startswith("__"):
            raise AttributeError(name)
        hint = _MISSING_HINTS.get(name, f"it offers {_TRIAL_API}")
        raise AttributeError(f"studyflow: the trial an objective gets on a worker (RemoteTrial) "
                             f"has no {name!r}: {hint}")

    # --- what the trial is ---

    @property
    def number(self) -> int:
        return self._number

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter's distribution: the study file's arrive with the trial, a
        define-by-run one with its value."""
        for name, text in self._distribution_json.items():
            if name not in self._decoded:
                self._decoded[name] = json_to_distribution(text)
        return copy.deepcopy(self._decoded)

    @property
    def datetime_start(self) -> datetime | None:
        """When the study server started the trial (as the journal has it)."""
        started = self._datetime_start
        return None if started is None else datetime.fromisoformat(started)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return dict(self._user_attrs)

    @property
    def constraints(self) -> dict[str, float]:
        n = len(CONSTRAINT_PREFIX)
        return {k[n:]: v for k, v in self._system_attrs.items() if k.startswith(CONSTRAINT_PREFIX)}

    @property
    def recorded_system_attrs(self) -> dict[str, Any]:
        """The system attributes set on this trial (constraints, artifact records): the trial
        loop sends them with the outcome."""
        return dict(self._system_attrs)

    @property
    def study(self) -> StudyView:
        """A read-only view of the study on the server (`StudyView`)."""
        return self._conn.study_view()

    @property
    def storage(self) -> WorkerTrialStorage:
        """Stands in for Optuna's storage where Optuna's helpers write to a trial through it
        (`optuna.artifacts.upload_artifact`): it records what they set, for the tell."""
        return WorkerTrialStorage(self)

    @property
    def relative_params(self) -> dict[str, Any]:
        raise NotImplementedError(
            "studyflow: relative_params are the sampler's, on the study server, and are applied "
            "when the trial is asked; trial.params holds every parameter the trial has")

    @property
    def artifact_dir(self) -> Path:
        """A folder for the trial's files; kept under its key in the store if it completes."""
        if self._artifact_dir is None:
            raise RuntimeError("this trial has no artifact folder")
        path = Path(self._artifact_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.used_artifact_dir = True
        return path

    # --- suggesting ---

    def _remote_suggest(self, method: str, name: str, **kwargs: Any) -> Any:
        if name in self._params:  # from the study file's space, or suggested before
            return _as_suggested(name, method, self._params[name])
        if name in self._relative and _same_distribution(method, kwargs, self._relative_json[name]):
            self._params[name] = self._relative.pop(name)
            self._distribution_json[name] = self._relative_json[name]
            self.suggested.append([method, name, kwargs])
            return self._params[name]
        before, self.suggested = self.suggested, []  # the server records them first, in order
        reply = self._conn.call("suggest", number=self._number, method=method, name=name,
                                kwargs=kwargs, before=before)
        self._params[name] = reply["value"]
        if reply.get("distribution") is not None:
            self._distribution_json[name] = reply["distribution"]
        return reply["value"]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._remote_suggest("suggest_float", name, low=low, high=high, step=step, log=log)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return self._remote_suggest("suggest_int", name, low=low, high=high, step=step, log=log)

    def suggest_categorical(  # type: ignore[override]
        self, name: str, choices: Sequence[Any]
    ) -> Any:
        return self._remote_suggest("suggest_categorical", name, choices=list(choices))

    # suggest_uniform, suggest_loguniform and suggest_discrete_uniform are optuna.Trial's own:
    # they warn that they are deprecated and call suggest_float above.

    # --- pruning, attributes, constraints ---

    def report(self, value: float, step: int) -> None:
        """Checked here as Optuna checks it; the server's trial records it for the pruner."""
        value = _as_float(value)
        try:
            step = int(step)
        except (TypeError, ValueError):
            raise TypeError(
                f"The `step` argument is of type '{type(step)}' but supposed to be an int."
            ) from None
        if step < 0:
            raise ValueError(f"`{step=}` must be non-negative.")
        self._conn.call("report", number=self._number, value=value, step=step)

    def should_prune(self) -> bool:
        return bool(self._conn.call("should_prune", number=self._number)["prune"])

    def set_user_attr(self, key: str, value: Any) -> None:
        """As Optuna's; NumPy numbers and arrays, and tensors (what a model's fit hands back),
        are kept as the Python numbers and lists the journal's JSON holds, where Optuna's own
        journal refuses them. Anything else JSON cannot hold fails the trial (RecordError)."""
        self._user_attrs[key] = _plain(value)

    def set_constraint(self, key: str, value: float) -> None:
        """As `optuna.Trial.set_constraint`; the server sets it on its trial before the tell,
        so the sampler (TPE, NSGA-II, GP) and `best_trial` see it."""
        value = _as_float(value)
        if math.isnan(value):
            raise ValueError(f"Attempted to set a constraint for {key!r}, but NaN is not allowed.")
        attr = f"{CONSTRAINT_PREFIX}{key}"
        if attr in self._system_attrs:
            warnings.warn(f"The constraint value is ignored because this constraint `{key=}` is "
                          "already set.", stacklevel=2)
            return
        self._system_attrs[attr] = value

    def _set_system_attr(self, key: str, value: Any) -> None:
        """What `trial.storage.set_trial_system_attr` records (Optuna's helpers, MLflow's
        `track_in_mlflow`): set on the server's trial before the tell, as `JournalStorage`
        would; studyflow's own attributes are refused."""
        if key.startswith(STUDYFLOW_PREFIX):
            raise ValueError(f"studyflow: system attribute {key!r} is studyflow's own; an objective "
                             "cannot set it (use another name, or trial.set_user_attr)")
        self._system_attrs[key] = _plain(value)


_MISSING_HINTS = {
    "system_attrs": "Optuna 5's Trial has none either; use trial.user_attrs "
                    "(or trial.constraints)",
    "set_system_attr": "Optuna 5's Trial has none either; use trial.set_user_attr "
                       "(or trial.set_constraint)",
    "relative_search_space": "relative sampling runs on the study server when the trial is "
                             "asked; trial.distributions has every parameter's distribution",
}


def _wanted(method: str, kwargs: dict[str, Any]) -> BaseDistribution:
    """The distribution a suggest asks for, as `optuna.Trial.suggest_*` builds it (and raises)."""
    if method == "suggest_float":
        return FloatDistribution(kwargs["low"], kwargs["high"], log=kwargs["log"], step=kwargs["step"])
    if method == "suggest_int":
        return IntDistribution(kwargs["low"], kwargs["high"], log=kwargs["log"], step=kwargs["step"])
    return CategoricalDistribution(kwargs["choices"])


def _same_distribution(method: str, kwargs: dict[str, Any], relative_json: str) -> bool:
    """Whether a suggest asks for exactly the distribution a relative parameter was sampled
    from (as `optuna.Trial.suggest_*` builds it). Anything else (a compatible but different
    range, invalid arguments) goes to the server, where Optuna decides as it always does."""
    try:
        wanted = _wanted(method, kwargs)
    except Exception:  # noqa: BLE001  the server's Optuna raises the user's error itself
        return False
    return not wanted.single() and wanted == json_to_distribution(relative_json)


def _as_suggested(name: str, method: str, value: Any) -> Any:
    """The trial's value of `name` (the study file's, or suggested before) as `method` returns
    it. The file's range, step, log scale or choices are the study's (a grid lists floats as
    categorical choices; a file may narrow or log-scale what the objective says), but a value
    the suggest cannot return fails, as Optuna refuses another kind of distribution: not a
    number for `suggest_float`, not a whole number for `suggest_int` (which returns an int)."""
    if method == "suggest_categorical":
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and method == "suggest_float":
        return value
    if number and float(value).is_integer():
        return int(value)
    wanted = "a number" if method == "suggest_float" else "a whole number"
    raise ValueError(f"{method}({name!r}) cannot return {value!r}, not {wanted}: the trial's value of "
                     f"{name!r} comes from the study file's search_space.{name} (or an earlier suggest)")


def _plain(value: Any) -> Any:
    """`value` with array and tensor values (NumPy's, PyTorch's, JAX's: what has `tolist`) as
    Python numbers and lists, in lists, tuples and dicts too (a tuple, which JSON stores as a
    list, becomes one)."""
    if isinstance(value, (np.generic, np.ndarray)) or (
            callable(getattr(value, "tolist", None)) and not isinstance(value, (str, bytes, dict, list, tuple))):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _as_float(value: Any) -> float:
    """A `value` argument as Optuna's `report` and `set_constraint` take it, with its error."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"The `value` argument is of type '{type(value)}' but supposed to be a float.") from None


def check_result(result: Any, n_objectives: int) -> tuple[list[float] | None, str | None]:
    """Turn what the objective returned into values, or an error saying what was wrong, by
    Optuna's rules (`optimize` and `tell`): a list or tuple holds the values, anything else is
    one; each must convert with `float()` (a NumPy or 0-d array scalar, a framework's 0-d tensor,
    an int, a bool) and not be NaN; +-inf are values. A string is no number (Optuna would read
    it as a list of characters)."""
    items = list(result) if isinstance(result, (list, tuple)) else [result]
    if n_objectives == 1 and isinstance(result, (list, tuple)) and len(items) != 1:
        return None, f"InvalidResult: objective returned {result!r}, expected one number"
    if len(items) != n_objectives:
        return None, f"InvalidResult: objective returned {result!r}, expected {n_objectives} values"
    values: list[float] = []
    for item in items:
        try:
            if isinstance(item, (str, bytes)):
                raise TypeError
            value = float(item)
        except (TypeError, ValueError):
            return None, f"InvalidResult: objective returned {result!r}, not a number"
        if math.isnan(value):
            return None, f"InvalidResult: objective returned {result!r}, NaN is not a value"
        values.append(value)
    return values, None
