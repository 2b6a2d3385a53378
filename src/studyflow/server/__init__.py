"""The study server: a Dask scheduler plugin holding each study, and the study as it serves
it, in parts: the plugin and its handlers (`_plugin`) and what they send back (`_replies`),
the service loop (`_service`), asking
and telling (`_asking`, `_telling`), the budget and stop rules (`_budget`), the lease table
(`_leases`), trials waiting for a running key (`_same_key`), when outcomes reach Optuna
(`_ordering`), and open/resume/close (`_lifecycle`)."""

from studyflow.server._asking import INVALID_STUDY
from studyflow.server._budget import STUDY_FAILED
from studyflow.server._lifecycle import StudySpec
from studyflow.server._lifecycle import best_of
from studyflow.server._malloc import keep_freed_memory
from studyflow.server._plugin import StudyServer
from studyflow.server._plugin import hand_over

__all__ = [
    "INVALID_STUDY",
    "STUDY_FAILED",
    "StudyServer",
    "StudySpec",
    "best_of",
    "hand_over",
    "keep_freed_memory",
]
