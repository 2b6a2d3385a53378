"""An exclusive lock per study, so a second driver (say, a rerun while an orphaned job from a
killed `snakemake` still runs) waits a little, then fails with a message naming the holder,
instead of writing to the same journal."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from studyflow.errors import StudyLockedError


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class StudyLock:
    def __init__(self, path: str | Path, wait_s: float = 10.0) -> None:
        self.path = Path(path)
        self.wait_s = wait_s
        self._fd: int | None = None

    def __enter__(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while not _try_lock(fd):  # an orphaned driver stops within a second or so
            if time.monotonic() > deadline:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StudyLockedError(
                    f"{self.path}: study is already being run by {holder}; "
                    "wait for it or stop that process"
                )
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
