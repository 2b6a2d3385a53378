"""studyflow: Optuna studies as reproducible Snakemake workflows on a Dask cluster."""

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

__all__ = [
    "ConfigError",
    "DataError",
    "ObjectiveError",
    "ReadOnlyStudyError",
    "RemoteTrial",
    "StudyAbortedError",
    "StudyConfig",
    "StudyLockedError",
    "StudyResult",
    "StudyflowError",
    "load_study",
    "optimize",
]
