"""A trial loop's trail: the trials it began and the outcomes it has not yet had answered,
in a file the study server reads when the loop's worker dies.

A loop sends its outcomes behind at most one exchange in flight, batched when trials are
shorter than a round trip, so a worker that dies (a segfault, SIGKILL, the OOM killer) took
with it outcomes the server had not heard of, and the server blamed the crash on the trial it
last heard was running, which had often returned: the trial that crashed went out again as
never begun. Now the loop appends `{"began": n}` before trial n begins and each outcome before
it leaves (`TrailWriter`), one unbuffered write each, so the kernel holds them once the write
returns, whatever becomes of the process. When the worker is lost the server reads the trail
(`read_trail`): an outcome found there is told as if it had arrived, the one trial begun
without an outcome is the one that was running (it fails, and is retried), and a trial never
begun goes to another loop.

The file lies beside the study's store (the folder travels in the replies that lease trials),
where the server can read it: on one machine, or on the shared file system a SLURM cluster's
results live on. A loop that cannot write there runs on without a trail, as before. Records
are msgpack maps; the loop empties the file once the server has answered every outcome in it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from typing import Any

import msgpack

_logger = logging.getLogger(__name__)
COMPACT_BYTES = 1 << 16  # a trail past this is rewritten with only the outcomes not yet answered


def trail_path(folder: str, loop_id: str) -> str:
    """Where loop `loop_id` keeps its trail in the study's trail folder (both ends name it so)."""
    return os.path.join(folder, hashlib.sha1(loop_id.encode()).hexdigest()[:24] + ".trail")


class TrailWriter:
    """The loop's side: `began` before a trial runs, `finished` before its outcome leaves.
    `answered` (the courier's count of outcomes the server has answered, in the order they
    were finished) lets it drop what the server has: the file stays small."""

    def __init__(self) -> None:
        self.path: str | None = None
        self._opened = False  # tried: a folder it cannot write to is not tried again each trial
        self._fd: int | None = None
        self._size = 0
        self._unanswered: deque[tuple[int, bytes]] = deque()  # (outcome's index, its record)
        self._finished = 0  # outcomes written so far

    def open(self, folder: str | None, loop_id: str) -> None:
        """Keep the trail in `folder` (the server's, from a reply); once, before the first trial."""
        if folder is None or self._opened:
            return
        self._opened = True
        path = trail_path(folder, loop_id)
        try:
            os.makedirs(folder, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            _logger.warning("trial loop %s: no trail (%s): a crash of this worker may cost the outcomes "
                            "not yet sent", loop_id, exc)
            return
        self.path = path

    def began(self, number: int, answered: int) -> None:
        while self._unanswered and self._unanswered[0][0] < answered:
            self._unanswered.popleft()
        if self._size and (not self._unanswered or self._size > COMPACT_BYTES):
            self._rewrite(b"".join(record for _, record in self._unanswered))
        self._write(msgpack.packb({"began": number}))

    def finished(self, outcome: dict[str, Any]) -> None:
        record = msgpack.packb({"outcome": outcome})
        self._unanswered.append((self._finished, record))
        self._finished += 1
        self._write(record)

    def close(self, remove: bool = True) -> None:
        """Stop writing; `remove` the trail once the server has every outcome in it (else it
        stays for the server, which reads it when it releases the loop)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if remove:
            try:
                os.unlink(self.path)  # type: ignore[arg-type]
            except OSError:
                pass

    def _rewrite(self, kept: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            self._give_up(exc)
            return
        self._size = 0
        if kept:
            self._write(kept)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, data)
        except OSError as exc:  # a full disk: the loop goes on without its trail
            self._give_up(exc)
            return
        self._size += len(data)

    def _give_up(self, exc: OSError) -> None:
        _logger.warning("trail %s: %s; going on without it", self.path, exc)
        self.close()


def read_trail(path: str) -> tuple[list[int], list[dict[str, Any]]] | None:
    """The server's side: the trials a lost loop began and the outcomes (wire dicts) it kept,
    in order; None when it left no trail (it could not write one, or it has none yet). The
    file is removed once read."""
    began: list[int] = []
    outcomes: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
            try:
                for record in unpacker:
                    if isinstance(record, dict) and "began" in record:
                        began.append(int(record["began"]))
                    elif isinstance(record, dict) and "outcome" in record:
                        outcomes.append(record["outcome"])
            except (ValueError, TypeError, msgpack.UnpackException):  # damaged: what was read before counts
                _logger.warning("trail %s: unreadable past %d records", path, len(began) + len(outcomes))
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _logger.warning("trail %s: %s", path, exc)
        return None
    return began, outcomes
