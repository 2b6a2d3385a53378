"""One study's run: inputs checked, the cluster started or attached, the study opened and
supervised, hooks called, the result returned; and `standing`, a cluster that outlives one
study (`studyflow cluster up|status|down`)."""

from studyflow.driver import _standing as standing
from studyflow.driver._cluster import PROFILE_ENV_VAR
from studyflow.driver._cluster import connect
from studyflow.driver._cluster import describe
from studyflow.driver._result import ResultsLayout
from studyflow.driver._result import StudyResult
from studyflow.driver._run import optimize

__all__ = [
    "PROFILE_ENV_VAR",
    "ResultsLayout",
    "StudyResult",
    "connect",
    "describe",
    "optimize",
    "standing",
]
