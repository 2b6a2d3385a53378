"""The trial loop: one long-lived Dask task per worker slot doing ask -> objective -> tell.

A trial costs one RPC to the study server (the tell brings back the next trial), not a task
submission. The loop returns when the server says the budget is spent.
"""

from __future__ import annotations

import os
import time
import traceback
from functools import lru_cache
from typing import Any

import optuna
import pandas as pd

from studyflow.objective import add_search_paths
from studyflow.objective import bind
from studyflow.objective import import_objective
from studyflow.trial import RemoteTrial
from studyflow.trial import ServerConnection
from studyflow.trial import check_result


@lru_cache(maxsize=4)
def _read_parquet(path: str, mtime_ns: int) -> pd.DataFrame:
    return pd.read_parquet(path)


def load_data(data: Any) -> Any:
    """A staged parquet path is read once per worker process; anything else is used as is."""
    if isinstance(data, str) and data.endswith(".parquet"):
        return _read_parquet(data, os.stat(data).st_mtime_ns)
    return data


def run_trial_loop(
    study_id: str,
    objective: Any,
    data: Any,
    objective_args: dict[str, Any],
    n_objectives: int,
    sys_paths: list[str],
) -> int:
    """Run trials until the server says stop; return how many this loop ran."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    add_search_paths(sys_paths)
    fn = import_objective(objective) if isinstance(objective, str) else objective
    call = bind(fn, objective_args)
    data = load_data(data)
    conn = ServerConnection(study_id)
    ran = 0
    reply = conn.call("ask", worker=conn.address)
    while True:
        if reply["status"] == "stop":
            return ran
        if reply["status"] != "run":
            reply = conn.call("ask", worker=conn.address)
            continue
        trial = RemoteTrial(conn, reply["number"], reply["params"], data, objective_args,
                            reply["key"], reply["seed"], reply["artifact_dir"])
        state, values, error, tb = "COMPLETE", None, None, None
        started = time.perf_counter()
        try:
            values, error = check_result(call(trial, data), n_objectives)
            if error:
                state = "FAIL"
        except optuna.TrialPruned:
            state = "PRUNED"
        except Exception as exc:
            state, error, tb = "FAIL", f"{type(exc).__name__}: {exc}", traceback.format_exc()
        reply = conn.call(
            "tell",
            number=trial.number,
            state=state,
            values=values,
            user_attrs=trial.user_attrs,
            error=error,
            traceback=tb,
            worker=conn.address,
            duration_s=time.perf_counter() - started,
            ask_next=True,
        )["next"]
        ran += 1
