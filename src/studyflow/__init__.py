"""studyflow: Optuna studies as reproducible Snakemake workflows on a Dask cluster.

The public names below load on first use (PEP 562), so `studyflow stage`, `summarize` and
`report` import neither Dask nor Optuna, and `studyflow run` can start its worker forkserver
before it imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

_WHERE = {
    "StudyConfig": "studyflow.config",
    "load_study": "studyflow.config",
    "StudyResult": "studyflow.driver",
    "optimize": "studyflow.driver",
    "ConfigError": "studyflow.errors",
    "DataError": "studyflow.errors",
    "ObjectiveError": "studyflow.errors",
    "ReadOnlyStudyError": "studyflow.errors",
    "StudyAbortedError": "studyflow.errors",
    "StudyLockedError": "studyflow.errors",
    "StudyflowError": "studyflow.errors",
    "RemoteTrial": "studyflow.worker",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'studyflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:
    from studyflow.config import StudyConfig
    from studyflow.config import load_study
    from studyflow.driver import StudyResult
    from studyflow.driver import optimize
    from studyflow.errors import ConfigError
    from studyflow.errors import DataError
    from studyflow.errors import ObjectiveError
    from studyflow.errors import ReadOnlyStudyError
    from studyflow.errors import StudyAbortedError
    from studyflow.errors import StudyLockedError
    from studyflow.errors import StudyflowError
    from studyflow.worker import RemoteTrial
