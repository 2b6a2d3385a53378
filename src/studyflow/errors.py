"""Exception classes: one root so callers can catch anything studyflow raises."""

from __future__ import annotations


class StudyflowError(Exception):
    """Root of every error studyflow raises on purpose."""


class ConfigError(StudyflowError, ValueError):
    """A study or workflow file is invalid; the message names the file and the key."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {message}")


class ObjectiveError(ConfigError):
    """The objective named in a study file cannot be imported or has the wrong signature."""


class DataError(StudyflowError):
    """A dataset is missing, unreadable, or does not have what the study needs."""


class StudyLockedError(StudyflowError):
    """Another driver already runs this study (named by its lock file and pid)."""


class StudyAbortedError(StudyflowError):
    """The study server stopped the study early, e.g. too many failed trials."""


class ReadOnlyStudyError(StudyflowError, RuntimeError):
    """An objective tried to change the study through `trial.study`, a read-only view on a
    worker: only the study server changes the study."""


class JournalDamagedError(StudyflowError):
    """A study journal has an unreadable record before its end (not a crash's torn last
    record): the message names the file, the line and the byte offset."""


class JournalWriteError(StudyflowError, OSError):
    """A study journal could not be written (a full disk, a file size limit, an I/O error):
    the study stops, as its outcomes can no longer be recorded; the message names the file."""
