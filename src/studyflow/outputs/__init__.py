"""What a study leaves behind: trials tables, the HTML study card and its figures, progress.

The tables need pandas and the study card (`write_report`, `write_index`) plotly: each is
imported on first use of a name that needs it, so a driver starting its cluster, or a worker
asked whether its scores are cheap, loads neither.
"""

import importlib
from typing import Any

from studyflow.outputs._importance import IMPORTANCES_FILE
from studyflow.outputs._importance import scores_are_cheap
from studyflow.outputs._importance import scores_if_loaded
from studyflow.outputs._progress import Progress

_LAZY = {  # name: the module that has it, imported on first use
    "FinalTables": "_tables",
    "summarize": "_tables",
    "trials_frame": "_tables",
    "write_parquet": "_tables",
    "write_index": "_report",
    "write_report": "_report",
    "write_matrix": "_matrix",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"studyflow.outputs.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'studyflow.outputs' has no attribute {name!r}")


__all__ = [
    "IMPORTANCES_FILE",
    "FinalTables",
    "Progress",
    "scores_are_cheap",
    "scores_if_loaded",
    "summarize",
    "trials_frame",
    "write_index",
    "write_matrix",
    "write_parquet",
    "write_report",
]
