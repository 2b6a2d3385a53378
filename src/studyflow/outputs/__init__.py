"""What a study leaves behind: trials tables, the HTML study card and its figures, progress.

A study's trials table needs pyarrow (`trials_table`, `write_table`), the summaries pandas and
the study card (`write_report`, `write_index`) plotly: each is imported on first use of a name
that needs it, so a driver starting its cluster, or a worker asked whether its scores are
cheap, loads none of them, and `studyflow run` never loads pandas or plotly.
"""

import importlib
import threading
from typing import Any

from studyflow.outputs._importance import IMPORTANCES_FILE
from studyflow.outputs._importance import scores_are_cheap
from studyflow.outputs._importance import scores_if_loaded
from studyflow.outputs._importance import why_no_scores
from studyflow.outputs._progress import Progress

_LAZY = {  # name: the module that has it, imported on first use
    "FinalTables": "_trials_table",
    "trials_table": "_trials_table",
    "write_table": "_trials_table",
    "summarize": "_tables",
    "trials_frame": "_tables",
    "write_parquet": "_tables",
    "write_index": "_report",
    "write_report": "_report",
    "write_matrix": "_matrix",
}


def import_tables_meanwhile() -> None:
    """Import the trials table's modules (pyarrow and its parquet writer: ~0.1 s of CPU), and
    read the pandas version its metadata names (from pandas' package metadata), on a thread
    now. The driver calls it once its study runs, when it mostly waits, so this is off the
    path from the study's last trial to the written tables. (Begun with the cluster's start it
    slowed the start: the driver's event loop is busy then.) What fails here fails again where
    the tables are built, and says so there."""

    def load() -> None:
        try:
            tables = importlib.import_module("studyflow.outputs._trials_table")
            importlib.import_module("pyarrow.parquet")
            tables.pandas_version()
        except Exception:  # noqa: BLE001  raised again where it is used
            return

    threading.Thread(target=load, name="studyflow-table-imports", daemon=True).start()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"studyflow.outputs.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'studyflow.outputs' has no attribute {name!r}")


__all__ = [
    "IMPORTANCES_FILE",
    "FinalTables",
    "Progress",
    "import_tables_meanwhile",
    "scores_are_cheap",
    "scores_if_loaded",
    "summarize",
    "trials_frame",
    "trials_table",
    "why_no_scores",
    "write_index",
    "write_matrix",
    "write_parquet",
    "write_report",
    "write_table",
]
