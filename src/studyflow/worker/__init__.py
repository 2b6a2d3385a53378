"""What runs on a Dask worker: the trial loop, the remote trial an objective receives, the
objective's import (or the objective and data the study server holds for it, `_held`), and
the process's trial threads (`_threads`)."""

from studyflow.worker._loop import run_trial_loop
from studyflow.worker._objective import ObjectiveFn
from studyflow.worker._objective import add_search_paths
from studyflow.worker._objective import check_findable
from studyflow.worker._objective import check_signature
from studyflow.worker._objective import import_objective
from studyflow.worker._objective import objective_problem
from studyflow.worker._objective import objective_problem_in_a_thread
from studyflow.worker._objective import search_paths
from studyflow.worker._script_main import script_of
from studyflow.worker._trial import CONSTRAINT_PREFIX
from studyflow.worker._trial import RemoteTrial

__all__ = [
    "CONSTRAINT_PREFIX",
    "ObjectiveFn",
    "RemoteTrial",
    "add_search_paths",
    "check_findable",
    "check_signature",
    "import_objective",
    "objective_problem",
    "objective_problem_in_a_thread",
    "run_trial_loop",
    "script_of",
    "search_paths",
]
