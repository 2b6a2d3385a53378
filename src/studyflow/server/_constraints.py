"""Which system attributes a told trial gets, and whether it is feasible.

An objective may set system attributes on its trial (Optuna's constraints with
`trial.set_constraint`, artifact records, an MLflow run id through `trial.storage`), except
studyflow's own; the server sets them before the tell, so the sampler sees them. A trial
answered from the store gets those that hold the result (`RESULT_SYSTEM_ATTRS`), not, say,
the run id of the trial that ran. A study file's `constraints: {user_attr: c}` turns that user attribute into the
trial's constraints "0", "1", ... as Optuna's deprecated `constraints_func` returning it would.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from studyflow._attrs import CONSTRAINT_PREFIX
from studyflow._attrs import RESULT_SYSTEM_ATTRS
from studyflow._attrs import STUDYFLOW_PREFIX
from studyflow.config import StudyConfig


def system_attrs_to_set(config: StudyConfig, from_worker: dict[str, Any], user_attrs: dict[str, Any],
                        state: str, from_store: bool = False) -> dict[str, Any]:
    """The system attributes the objective set (`from_store`: those of them that hold the
    result), and the study file's `constraints.user_attr` of a COMPLETE or PRUNED trial (the
    states Optuna's `constraints_func` is called for). Raises ValueError when that user attr is bad."""
    if from_store:
        attrs = {k: v for k, v in from_worker.items() if k.startswith(RESULT_SYSTEM_ATTRS)}
    else:
        attrs = {k: v for k, v in from_worker.items() if not k.startswith(STUDYFLOW_PREFIX)}
    spec = config.constraints
    if spec is not None and state in ("COMPLETE", "PRUNED"):
        attrs = _user_attr_constraints(spec.user_attr, user_attrs, state == "COMPLETE") | attrs
    return attrs


def _user_attr_constraints(name: str, user_attrs: dict[str, Any], required: bool) -> dict[str, float]:
    if name not in user_attrs:
        if not required:
            return {}
        raise ValueError(f"the study file's constraints.user_attr is {name!r}, but the objective "
                         "set no such user attr")
    raw = user_attrs[name]
    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v) for v in items):
        raise ValueError(f"constraints.user_attr {name!r} must be a number or a list of numbers "
                         f"(not NaN), got {raw!r}")
    return {f"{CONSTRAINT_PREFIX}{i}": float(v) for i, v in enumerate(items)}


def feasible(system_attrs: dict[str, Any]) -> bool:
    """Every constraint in these system attributes is <= 0 (Optuna's feasibility)."""
    return all(v <= 0 for k, v in system_attrs.items() if k.startswith(CONSTRAINT_PREFIX))
