"""Trials and study summaries as pandas tables, written to parquet/CSV atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial

from studyflow._attrs import ATTEMPT_ATTR
from studyflow._attrs import CACHED_ATTR
from studyflow._attrs import DURATION_ATTR
from studyflow._attrs import ERROR_ATTR
from studyflow._attrs import KEY_ATTR
from studyflow._attrs import NOT_RUN_ATTR
from studyflow._attrs import RETRY_OF_ATTR
from studyflow._attrs import WARM_START_ATTR
from studyflow._attrs import WORKER_ATTR
from studyflow._io import atomic_write
from studyflow.store import TrialStore
from studyflow.worker import CONSTRAINT_PREFIX


@dataclass
class FinalTables:
    """A finished study's trials table and best trial(s), as its driver gets them: built by the
    server from the trials it holds, or from the journal if the scheduler lost the study."""

    trials: pd.DataFrame
    best: dict[str, Any]


def trials_frame(trials: list[FrozenTrial], n_objectives: int, store: TrialStore | None = None) -> pd.DataFrame:
    """One row per trial: number, state, value(s), params_<name>, times, worker, error, key,
    cached, artifacts (the trial's folder in the store, if it wrote one), user attrs, and
    constraints_<key> in a constrained study. Trials sampled but never run (held by a loop when
    the study stopped) and an earlier study's trials copied in by `warm_start` are left out."""
    rows = []
    with_artifacts = store.keys_with_artifacts() if store is not None else set()
    for t in trials:
        if t.system_attrs.get(NOT_RUN_ATTR) or WARM_START_ATTR in t.system_attrs:
            continue
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        values = t.values if t.values is not None else [None] * n_objectives
        if n_objectives == 1:
            row["value"] = values[0]
        else:
            row.update({f"values_{i}": v for i, v in enumerate(values)})
        row.update({f"params_{k}": v for k, v in t.params.items()})
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        # The objective's own time when the worker measured it (a reproducible study applies a
        # result later than it arrives), else Optuna's start-to-complete time.
        measured = t.system_attrs.get(DURATION_ATTR)
        row["duration_s"] = measured if measured is not None else (
            t.duration.total_seconds() if t.duration is not None else None)
        row["worker"] = t.system_attrs.get(WORKER_ATTR)
        row["error"] = t.system_attrs.get(ERROR_ATTR)
        row["attempt"] = int(t.system_attrs.get(ATTEMPT_ATTR, 0))
        row["retry_of"] = t.system_attrs.get(RETRY_OF_ATTR)
        row["key"] = t.system_attrs.get(KEY_ATTR)
        row["cached"] = bool(t.system_attrs.get(CACHED_ATTR, False))
        row["artifacts"] = str(store.artifacts_dir(row["key"])) if row["key"] in with_artifacts else None
        row.update({f"user_attrs_{k}": v for k, v in t.user_attrs.items()})
        row.update({f"constraints_{k.removeprefix(CONSTRAINT_PREFIX)}": v
                    for k, v in t.system_attrs.items() if k.startswith(CONSTRAINT_PREFIX)})
        rows.append(row)
    value_cols = ["value"] if n_objectives == 1 else [f"values_{i}" for i in range(n_objectives)]
    # A study stopped before any trial ran still gets its columns (filters on them work).
    df = pd.DataFrame(rows, columns=None if rows else [
        "number", "state", *value_cols, "datetime_start", "datetime_complete", "duration_s", "worker",
        "error", "attempt", "retry_of", "key", "cached", "artifacts"])
    if not rows:
        df = df.astype({"number": "int64", "attempt": "int64", "cached": "bool", "duration_s": "float64",
                        "datetime_start": "datetime64[ns]", "datetime_complete": "datetime64[ns]"})
    df["retry_of"] = df["retry_of"].astype("Int64")
    for col in value_cols:
        df[col] = df[col].astype("float64")
    for col in ("worker", "error", "state", "key", "artifacts"):
        df[col] = df[col].astype("string")
    for col in df.columns:
        if col.startswith(("params_", "user_attrs_")) and df[col].dtype == object:
            df[col] = _uniform(df[col])
    return df.sort_values("number", ignore_index=True)


def _uniform(col: pd.Series) -> pd.Series:
    """Parquet needs one type per column: mixed categorical choices become strings."""
    kinds = {type(v) for v in col.dropna()}
    if len(kinds) <= 1 and not kinds & {list, dict}:
        return col
    return col.map(lambda v: None if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else str(v)))


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def summarize(study_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One row per study; the best parameters in long form (study, param, value); and every
    trial's artifacts folder in the store, by key (study, number, state, value, key, artifacts)."""
    studies, params, artifacts = [], [], []
    for study_dir in study_dirs:
        best = json.loads((Path(study_dir) / "best.json").read_text())
        trials = pd.read_parquet(Path(study_dir) / "trials.parquet")
        states = trials["state"].value_counts()
        studies.append(
            {
                "study": best["study"],
                "directions": ",".join(best["directions"]),
                "n_trials": int(len(trials)),
                "complete": int(states.get("COMPLETE", 0)),
                "pruned": int(states.get("PRUNED", 0)),
                "failed": int(states.get("FAIL", 0)),
                "best_number": best.get("best_number"),
                "best_value": (best.get("best_values") or [None])[0],
                "wall_time_s": best.get("wall_time_s"),
                "workers": best.get("workers"),
                "stop_reason": best.get("stop_reason"),
            }
        )
        for name, value in (best.get("best_params") or {}).items():
            params.append({"study": best["study"], "param": name, "value": str(value)})
        if "artifacts" in trials.columns:
            kept = trials[trials["artifacts"].notna()]
            value_col = "value" if "value" in kept.columns else "values_0"
            for row in kept.to_dict("records"):
                artifacts.append({"study": best["study"], "number": row["number"], "state": row["state"],
                                  "value": row.get(value_col), "key": row["key"], "artifacts": row["artifacts"]})
    studies_df = pd.DataFrame(studies)
    params_df = pd.DataFrame(params, columns=["study", "param", "value"])
    artifacts_df = pd.DataFrame(artifacts, columns=["study", "number", "state", "value", "key", "artifacts"])
    return studies_df, params_df, artifacts_df
