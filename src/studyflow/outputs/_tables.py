"""Trials and study summaries as pandas tables, written to parquet/CSV atomically. (A study's
own trials table is built and written without pandas: `_trials_table`.)"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from optuna.trial import FrozenTrial

from studyflow._io import atomic_write
from studyflow.outputs._counts import trial_counts
from studyflow.outputs._trials_table import trials_table
from studyflow.outputs._trials_table import value_columns
from studyflow.store import TrialStore


def trials_frame(trials: list[FrozenTrial], value_cols: list[str], store: TrialStore | None = None) -> pd.DataFrame:
    """`trials_table` as a DataFrame (what `trials.parquet` reads as)."""
    return trials_table(trials, value_cols, store).to_pandas()


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def summarize(study_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One row per study; the best parameters in long form (study, param, value); and every
    trial's artifacts folder in the store, by key (study, number, state, value, key, artifacts)."""
    studies, params, artifacts = [], [], []
    for study_dir in study_dirs:
        best = json.loads((Path(study_dir) / "best.json").read_text())
        trials = pd.read_parquet(Path(study_dir) / "trials.parquet")
        studies.append(
            {
                "study": best["study"],
                "directions": ",".join(best["directions"]),
                **trial_counts(trials["state"], trials["error"]),
                "best_number": best.get("best_number"),
                "best_value": (best.get("best_values") or [None])[0],
                "wall_time_s": best.get("wall_time_s"),
                "active_time_s": best.get("active_time_s"),
                "workers": best.get("workers"),
                "stop_reason": best.get("stop_reason"),
            }
        )
        for name, value in (best.get("best_params") or {}).items():
            params.append({"study": best["study"], "param": name, "value": str(value)})
        if "artifacts" in trials.columns:
            kept = trials[trials["artifacts"].notna()]
            value_col = value_columns(list(kept.columns))[0]
            for row in kept.to_dict("records"):
                artifacts.append({"study": best["study"], "number": row["number"], "state": row["state"],
                                  "value": row.get(value_col), "key": row["key"], "artifacts": row["artifacts"]})
    studies_df = pd.DataFrame(studies)
    params_df = pd.DataFrame(params, columns=["study", "param", "value"])
    artifacts_df = pd.DataFrame(artifacts, columns=["study", "number", "state", "value", "key", "artifacts"])
    return studies_df, params_df, artifacts_df
