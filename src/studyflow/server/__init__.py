"""The study server: a Dask scheduler plugin holding each study, and the study as it serves
it (budget, leases, tells, resume and close)."""

from studyflow.server._malloc import keep_freed_memory
from studyflow.server._plugin import StudyServer
from studyflow.server._study import INVALID_STUDY
from studyflow.server._study import StudySpec
from studyflow.server._study import best_of

__all__ = [
    "INVALID_STUDY",
    "StudyServer",
    "StudySpec",
    "best_of",
    "keep_freed_memory",
]
