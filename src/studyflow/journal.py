"""An Optuna journal backend for a single writer: the study server.

Optuna's `JournalFileBackend` re-reads the file and takes a file lock on every operation,
because many processes may share it. Here the server is the only writer, so the logs are kept
in memory for `read_logs`; each append is written and flushed to the OS at once (it survives
the process being killed), and the server calls `flush_to_disk` (fsync) before it answers a
tell, so a told trial is on disk before the worker hears back. The file stays in Optuna's format, so
`JournalStorage(JournalFileBackend(path))` and optuna-dashboard open it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend

_logger = logging.getLogger(__name__)


class SingleWriterJournal(BaseJournalBackend):
    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._logs: list[dict[str, Any]] = []
        if self.path.exists():
            self._logs = self._read_existing()
        self._file = open(self.path, "ab")

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
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._file.write(text.encode("utf-8"))
        self._file.flush()
        self._logs.extend(logs)

    def flush_to_disk(self) -> None:
        if self._fsync and not self._file.closed:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("SingleWriterJournal lives in one process and is not pickled")
