"""What the objective receives on a worker: a trial that behaves like `optuna.Trial`.

Parameters from the study file's search space arrive with the ask, so `trial.suggest_*` for
them answers locally; a name not in the study file is suggested define-by-run, one RPC to the
study server each. User attributes travel with the tell.
"""

from __future__ import annotations

import asyncio
import math
import numbers
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from distributed import get_worker
from distributed.utils import sync


class ServerConnection:
    """Calls the study server's handlers from a task thread on a worker."""

    def __init__(self, study_id: str) -> None:
        self.worker = get_worker()
        self.address = self.worker.address
        self.study_id = study_id

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        handler = getattr(self.worker.scheduler, f"studyflow_{op}")
        return sync(self.worker.loop, handler, study_id=self.study_id, **kwargs)

    def submit(self, op: str, **kwargs: Any) -> Future:
        """Start a call and return at once: the trial loop runs its next trial meanwhile."""
        handler = getattr(self.worker.scheduler, f"studyflow_{op}")
        return asyncio.run_coroutine_threadsafe(
            handler(study_id=self.study_id, **kwargs), self.worker.loop.asyncio_loop
        )


class RemoteTrial:
    """The worker-side twin of `optuna.Trial` for one running trial."""

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
    ) -> None:
        self._conn = conn
        self._number = number
        self._params = dict(params)
        self.key = key  # the trial's content address in the trial store
        self.seed = seed  # derived from the key: seed your model with it for reproducible trials
        self._artifact_dir = artifact_dir
        self.used_artifact_dir = False  # told to the server: it moves the staged files only then
        self._user_attrs: dict[str, Any] = {}
        self.data = data
        self.settings = dict(settings or {})

    @property
    def number(self) -> int:
        return self._number

    @property
    def artifact_dir(self) -> Path:
        """A folder for the trial's files; kept under its key in the store if it completes."""
        if self._artifact_dir is None:
            raise RuntimeError("this trial has no artifact folder")
        path = Path(self._artifact_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.used_artifact_dir = True
        return path

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return dict(self._user_attrs)

    def _suggest(self, method: str, name: str, **kwargs: Any) -> Any:
        if name in self._params:  # from the study file's space, or suggested before
            return self._params[name]
        reply = self._conn.call("suggest", number=self._number, method=method, name=name, kwargs=kwargs)
        self._params[name] = reply["value"]
        return reply["value"]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._suggest("suggest_float", name, low=low, high=high, step=step, log=log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._suggest("suggest_int", name, low=low, high=high, step=step, log=log)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._suggest("suggest_categorical", name, choices=list(choices))

    def report(self, value: float, step: int) -> None:
        self._conn.call("report", number=self._number, value=float(value), step=int(step))

    def should_prune(self) -> bool:
        return bool(self._conn.call("should_prune", number=self._number)["prune"])

    def set_user_attr(self, key: str, value: Any) -> None:
        self._user_attrs[key] = value


def check_result(result: Any, n_objectives: int) -> tuple[list[float] | None, str | None]:
    """Turn what the objective returned into values, or an error saying what was wrong."""
    items = list(result) if isinstance(result, (list, tuple)) else [result]
    if n_objectives == 1 and isinstance(result, (list, tuple)) and len(items) != 1:
        return None, f"InvalidResult: objective returned {result!r}, expected one number"
    if len(items) != n_objectives:
        return None, f"InvalidResult: objective returned {result!r}, expected {n_objectives} values"
    values: list[float] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            return None, f"InvalidResult: objective returned {result!r}, not a number"
        value = float(item)
        if not math.isfinite(value):
            return None, f"InvalidResult: objective returned {result!r}, not a finite number"
        values.append(value)
    return values, None
