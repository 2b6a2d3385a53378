"""What a study leaves behind: trials tables, the HTML study card and its figures, progress.

The study card (`write_report`, `write_index`) needs plotly: it is imported on first use, so a
driver or a worker that only writes tables never loads it.
"""

from typing import Any

from studyflow.outputs._importance import IMPORTANCES_FILE
from studyflow.outputs._importance import scores_are_cheap
from studyflow.outputs._importance import scores_if_loaded
from studyflow.outputs._progress import Progress
from studyflow.outputs._tables import FinalTables
from studyflow.outputs._tables import summarize
from studyflow.outputs._tables import trials_frame
from studyflow.outputs._tables import write_parquet

_REPORT = ("write_index", "write_report")


def __getattr__(name: str) -> Any:
    if name in _REPORT:
        from studyflow.outputs import _report

        return getattr(_report, name)
    if name == "write_matrix":
        from studyflow.outputs import _matrix

        return _matrix.write_matrix
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
