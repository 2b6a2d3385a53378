"""Find the user's objective (`module:function`) and call it the way its signature asks.

Two calls, so a plain Optuna objective runs unchanged:

- `objective(trial, data, **objective_args)`: a study with data, and an objective whose second
  positional parameter objective_args do not name;
- `objective(trial, **objective_args)`: any other, its own defaults kept (`objective(trial)`,
  `objective(trial, n_folds=5)`); a study without data refuses one whose data parameter has
  no default.

Either way the data and objective_args are also on `trial.data` / `trial.settings`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import sys
from collections.abc import Callable
from collections.abc import Collection
from pathlib import Path
from typing import Any

from studyflow._imports import NotImportable
from studyflow._imports import import_named
from studyflow.errors import ObjectiveError

ObjectiveFn = Callable[..., Any]


def add_search_paths(paths: list[str]) -> None:
    """Let `module:function` find modules beside the study file or in the working directory."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def search_paths(study_file: str | None) -> list[str]:
    paths = [str(Path.cwd())]
    if study_file and Path(study_file).is_file():
        paths.insert(0, str(Path(study_file).resolve().parent))
    return paths


def import_objective(ref: str, label: str = "<study>") -> ObjectiveFn:
    try:
        fn = import_named(ref)
    except NotImportable as exc:
        raise ObjectiveError(label, "objective", str(exc)) from None
    if not callable(fn):
        raise ObjectiveError(label, "objective", f"{ref!r} is not callable")
    return fn


def check_findable(ref: str, label: str = "<study>") -> None:
    """Fail as `import_objective` would when the objective's top-level module is not there,
    without importing anything: before any cluster starts, while the module itself is imported
    later (for a local cluster by a worker, `objective_problem`; else by the driver)."""
    module_name = ref.partition(":")[0]
    top = module_name.partition(".")[0]
    try:
        found = top in sys.modules or importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = True  # let the import itself say what is wrong
    if not found:
        raise ObjectiveError(label, "objective", f"cannot import module {module_name!r}: "
                             f"ModuleNotFoundError: No module named {top!r}")


def objective_problem(ref: str, arg_names: list[str], paths: list[str], has_data: bool = True) -> str | None:
    """On a worker: why the objective named `ref` cannot be imported or called as studyflow
    will call it (what `import_objective` or `check_signature` would say), or None."""
    add_search_paths(paths)
    try:
        check_signature(import_objective(ref), dict.fromkeys(arg_names), has_data=has_data)
    except ObjectiveError as exc:
        return exc.message
    return None


async def objective_problem_in_a_thread(ref: str, arg_names: list[str], paths: list[str],
                                        has_data: bool = True) -> str | None:
    """`objective_problem` for `Client.run`, which runs a function on the worker's event loop:
    on a thread, so an import that takes long, or that starts an event loop of its own, runs
    as it would in a trial loop."""
    return await asyncio.get_running_loop().run_in_executor(None, objective_problem, ref, arg_names, paths, has_data)


def _data_parameter(fn: ObjectiveFn, objective_args: Collection[str]) -> inspect.Parameter | None:
    """The objective's second positional parameter, where data would go: None when it has
    none, or objective_args name it (`objective(trial, scale=1.0)`, `objective_args: {scale: 10}`)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if len(positional) < 2 or (positional[1].kind is not positional[1].VAR_POSITIONAL
                               and positional[1].name in objective_args):
        return None
    return positional[1]


def wants_data(fn: ObjectiveFn, objective_args: Collection[str] = (), has_data: bool = True) -> bool:
    """True for `objective(trial, data, **objective_args)`: a study with data, and an objective
    with a parameter for it (`_data_parameter`). False for `objective(trial, **objective_args)`:
    no such parameter, or no data, where the objective's own default applies, as under
    Optuna's `optimize` (`objective(trial, n_folds=5)`)."""
    return has_data and _data_parameter(fn, objective_args) is not None


def check_signature(fn: ObjectiveFn, objective_args: dict[str, Any], label: str = "<study>",
                    has_data: bool = True) -> None:
    """Fail before any cluster starts if the objective cannot be called as studyflow will:
    for a study without data, an objective whose data parameter has no default too."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    name = getattr(fn, "__name__", fn)
    param = _data_parameter(fn, objective_args)
    try:  # objective_args against the signature, with data in its place where it has one
        sig.bind(None, *([None] if param is not None else []), **objective_args)
    except TypeError as exc:
        shape = "objective(trial, data, **objective_args)" if param is not None else "objective(trial, **objective_args)"
        raise ObjectiveError(
            label,
            "objective",
            f"{name!r} has signature {sig}; studyflow calls {shape}"
            f" with objective_args {sorted(objective_args)}: {exc}",
        ) from exc
    if not has_data and param is not None and param.kind is not param.VAR_POSITIONAL and param.default is param.empty:
        raise ObjectiveError(label, "objective", (
            f"{name!r} takes data (parameter {param.name!r}), but the study has no data: name a dataset "
            f"in `data:`, pass data= to optimize(), or give {param.name!r} a default"))


def bind(fn: ObjectiveFn, objective_args: dict[str, Any], has_data: bool = True) -> Callable[[Any, Any], Any]:
    """Return `call(trial, data)`, looking at the signature once, not per trial."""
    if wants_data(fn, objective_args, has_data):
        return lambda trial, data: fn(trial, data, **objective_args)
    return lambda trial, data: fn(trial, **objective_args)
