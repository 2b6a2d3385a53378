"""The content-addressed trial store: one result per distinct trial, artifacts by key."""

from studyflow.store._code import code_version
from studyflow.store._code import objective_code_version
from studyflow.store._code import objective_identity
from studyflow.store._code import objective_state
from studyflow.store._code import package_versions
from studyflow.store._code import source_fingerprint
from studyflow.store._code import strategy_fingerprint
from studyflow.store._gc import gc
from studyflow.store._gc import store_in_use
from studyflow.store._store import StoredResult
from studyflow.store._store import TrialStore
from studyflow.store._store import trial_key
from studyflow.store._store import trial_seed

__all__ = [
    "StoredResult",
    "TrialStore",
    "code_version",
    "objective_code_version",
    "objective_identity",
    "objective_state",
    "package_versions",
    "source_fingerprint",
    "strategy_fingerprint",
    "gc",
    "store_in_use",
    "trial_key",
    "trial_seed",
]
