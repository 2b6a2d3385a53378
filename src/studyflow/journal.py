"""An Optuna journal backend for a single writer: the study server.

Optuna's `JournalFileBackend` re-reads the file and takes a file lock on every operation,
because many processes may share it. Here the server is the only writer, so the logs are kept
in memory for `read_logs`; the server hands each ask's or tell's records to the OS (`flush`:
they survive the process being killed) and fsyncs them before it answers a tell, so a told
trial is on disk before the worker hears back (`sync_soon`: on another thread, while the server
samples the next trials). The file stays in Optuna's format, so
`JournalStorage(JournalFileBackend(path))` and optuna-dashboard open it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Container
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

_logger = logging.getLogger(__name__)
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps builds one per call otherwise


class SingleWriterJournal(BaseJournalBackend):
    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._logs: list[dict[str, Any]] = []
        if self.path.exists():
            self._logs = self._read_existing()
        self._file = open(self.path, "ab")
        self._syncer: ThreadPoolExecutor | None = None  # fsyncs off the serving thread

    def _read_existing(self) -> list[dict[str, Any]]:
        """Read the journal; a torn last line (a crash mid-write) is cut off, not fatal."""
        logs: list[dict[str, Any]] = []
        good_bytes = 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    logs.append(json.loads(line))
                except json.JSONDecodeError:
                    break
                good_bytes += len(line)
        size = self.path.stat().st_size
        if good_bytes < size:
            _logger.warning(
                "%s: dropping %d bytes of a torn last record", self.path, size - good_bytes
            )
            os.truncate(self.path, good_bytes)
        return logs

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # Buffered: the server calls `flush` once at the end of each ask or tell (one write
        # syscall instead of six), before any worker hears about it.
        text = "".join(_ENCODER.encode(log) + "\n" for log in logs)
        self._file.write(text.encode("utf-8"))
        self._logs.extend(logs)

    def flush(self) -> None:
        """Hand what was appended to the OS: it then survives this process being killed."""
        if not self._file.closed:
            self._file.flush()

    def sync_soon(self) -> Future[None] | None:
        """Hand what was appended to the OS and fsync it on another thread; the caller works on
        and waits for the returned future before it answers. None when fsync is off or closed."""
        if not self._fsync or self._file.closed:
            return None
        self._file.flush()
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="studyflow-fsync")
        return self._syncer.submit(os.fsync, self._file.fileno())

    def flush_to_disk(self) -> None:
        """fsync everything appended so far (a group commit: one fsync covers a batch's tells)."""
        if self._fsync:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except ValueError:  # closed: close() synced it
                pass

    def close(self) -> None:
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None
        if not self._file.closed:
            self.flush_to_disk()
            self._file.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("SingleWriterJournal lives in one process and is not pickled")


class ServerJournalStorage(JournalStorage):
    """`JournalStorage` for the server, the journal's only writer.

    Optuna's `ask` looks for a WAITING trial (an enqueued retry) on every call by scanning all
    trials: 1 ms at 2,000 trials, growing with the study. The only writer knows whether any
    trial can be waiting, and answers at once when none can.
    """

    def __init__(self, backend: SingleWriterJournal) -> None:
        super().__init__(backend)
        self._maybe_waiting = True  # a resumed journal may hold enqueued trials

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None and template_trial.state == TrialState.WAITING:
            self._maybe_waiting = True
        return super().create_new_trial(study_id, template_trial)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        only_waiting = states is not None and list(states) == [TrialState.WAITING]
        if only_waiting and not self._maybe_waiting:
            return []
        trials = super().get_all_trials(study_id, deepcopy, states)
        if only_waiting and not trials:
            self._maybe_waiting = False
        return trials
