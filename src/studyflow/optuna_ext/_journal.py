"""An Optuna journal backend for a single writer: the study server.

Optuna's `JournalFileBackend` re-reads the file and takes a file lock on every operation,
because many processes may share it. Here the server is the only writer, so its new records
are kept in memory until its storage has read them back (`read_logs`). The server hands each
ask's or tell's records to the OS (`flush`) before any worker hears about them, so they survive
any process being killed; another thread fsyncs them within `SYNC_INTERVAL_S` (50 ms) while
the server goes on (`sync_soon`), so a machine crash can lose only the outcomes told in that
last interval, which a resume runs again. The file stays in Optuna's format, so
`JournalStorage(JournalFileBackend(path))` and optuna-dashboard open it. Once a write fails (a
full disk) every later one raises `JournalWriteError` unwritten, so no record ever follows a
torn one; opening cuts only a torn last record (`_journal_check`).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import threading
from collections.abc import Callable
from collections.abc import Container
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._compat import replayed_trials
from studyflow._compat import trial_id_of
from studyflow._json import reused_encoder
from studyflow.errors import JournalWriteError
from studyflow.optuna_ext._journal_check import load_records
from studyflow.optuna_ext._own_writes import OwnWritesJournalStorage

_logger = logging.getLogger(__name__)
# At most one background fsync per this many seconds: even on its own thread each one slows the
# serving thread by a fair share of what a fast trial costs it, so one per batch was too many; a
# machine crash loses at most the outcomes told in the last interval.
SYNC_INTERVAL_S = 0.05
_encode = reused_encoder()  # the records as `json.dumps(record, separators=(",", ":"))` writes them


class SingleWriterJournal(BaseJournalBackend):
    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._logs: list[dict[str, Any]] = []  # records from number `_n_read` on
        self._n_read = 0
        if self.path.exists():
            self._logs = self._read_existing()
        self._file = open(self.path, "ab")
        self._syncer: threading.Thread | None = None  # fsyncs off the serving thread
        self._sync_wanted = threading.Event()
        self._closing = threading.Event()
        self._sync_error: BaseException | None = None  # a background fsync's failure
        self._write_failed: str | None = None  # why a write failed: no record is written after it

    def _read_existing(self) -> list[dict[str, Any]]:
        """Read the journal; a torn last record (a crash mid-write) is cut off, any other
        unreadable record raises `JournalDamagedError` and leaves the file as it was."""
        size = self.path.stat().st_size
        logs = load_records(self.path)
        cut = size - self.path.stat().st_size
        if cut:
            _logger.warning("%s: dropped %d bytes of a torn last record", self.path, cut)
        return logs

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        """Records from `log_number_from` on. Its one reader (the server's storage) asks for
        each record once, in order, so what it has read is let go: the file keeps it, and the
        garbage collector no longer walks a trial's records (several dicts each) for the rest
        of the study."""
        start = log_number_from - self._n_read
        if start < 0:
            raise ValueError(f"{self.path}: records before {self._n_read} were already read by this journal's reader")
        del self._logs[:start]
        self._n_read = log_number_from
        return list(self._logs)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._write_text("".join(_encode(log) + "\n" for log in logs))
        self._logs.extend(logs)

    def append_applied(self, log: dict[str, Any], n_read: int) -> None:
        """Write a record that its reader applied itself, having read the `n_read` before it
        (`OwnWritesJournalStorage`): counted as read, not kept for `read_logs`."""
        if n_read != self._n_read + len(self._logs):
            raise ValueError(f"{self.path}: a record applied by its writer must follow every record read")
        self._write_text(_encode(log) + "\n")
        self._logs.clear()
        self._n_read = n_read + 1

    def _write_text(self, text: str) -> None:
        # Buffered: the server calls `flush` once at the end of each ask or tell (one write
        # syscall for all its records), before any worker hears about it.
        if self._write_failed is not None:
            raise self._write_error()
        try:
            self._file.write(text.encode("utf-8"))
        except OSError as exc:
            raise self._write_error(exc) from None

    def flush(self) -> None:
        """Hand what was appended to the OS: it then survives this process being killed."""
        if self._write_failed is not None:
            raise self._write_error()
        if not self._file.closed:
            try:
                self._file.flush()
            except OSError as exc:
                raise self._write_error(exc) from None

    def _write_error(self, exc: OSError | None = None) -> JournalWriteError:
        """The error every write raises once one failed (a full disk, a file size limit, an I/O
        error), `exc` being that first failure. Nothing is written after it: a record appended
        after a failed one could leave a torn record mid-file (a partial write, then room
        again), which reads as damage; stopped here, the file is its readable records and at
        most a torn last one, which the next open cuts off."""
        if self._write_failed is None:
            self._write_failed = str(exc.strerror or exc) if exc is not None else "unknown error"
        return JournalWriteError(
            f"{self.path}: cannot write the study journal ({self._write_failed}); the study stops: "
            "every trial told before is in the journal, and a rerun resumes once the disk has room")

    def sync_soon(self) -> None:
        """Hand what was appended to the OS and have it fsynced on another thread, within
        `SYNC_INTERVAL_S`; the caller goes on.

        Waiting for the disk before a worker hears back would put an fsync (slower still on
        network file systems) between every two trials of a loop, to protect only
        against a machine crash in those milliseconds, after which a resume reruns the trials
        it lost. A failed fsync is raised here the next time (and `close` fsyncs itself).
        """
        if not self._fsync or self._file.closed:
            return
        self.flush()
        if self._sync_error is not None:
            raise self._write_error(OSError(f"fsync failed: {self._sync_error}")) from self._sync_error
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="studyflow-fsync", daemon=True)
            self._syncer.start()
        self._sync_wanted.set()

    def _sync_loop(self) -> None:
        """fsync what was flushed, then rest for the interval; what is flushed meanwhile is
        covered by the next round."""
        fd = self._file.fileno()
        while True:
            self._sync_wanted.wait()
            if self._closing.is_set():
                return
            self._sync_wanted.clear()
            try:
                os.fsync(fd)
            except OSError as exc:
                self._sync_error = exc
                return
            if self._closing.wait(SYNC_INTERVAL_S):
                return

    def flush_to_disk(self) -> None:
        """fsync everything appended so far, now (failing a lease, a resume, the end of a study)."""
        if self._fsync and not self._file.closed:
            self.flush()
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise self._write_error(OSError(f"fsync failed: {exc}")) from None

    def close(self) -> None:
        if self._syncer is not None:
            self._closing.set()
            self._sync_wanted.set()
            self._syncer.join()
            self._syncer = None
        if not self._file.closed:
            try:
                self.flush_to_disk()
            finally:
                try:
                    self._file.close()
                except OSError:  # its buffer could not be written: raised above already
                    if self._write_failed is None:
                        raise

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("SingleWriterJournal lives in one process and is not pickled")


class ServerJournalStorage(OwnWritesJournalStorage):
    """`JournalStorage` for the server, the journal's only writer (which applies its own
    writes: `OwnWritesJournalStorage`).

    Optuna filters every trial by state on each `get_all_trials(states=...)`: samplers ask for
    the finished trials on every ask (TPE twice), and `ask` for WAITING ones (an enqueued
    retry): a scan of every trial each time. Every state change passes through this object, so
    it keeps the trial ids of each state instead (built by one scan at first use) and answers
    from them, in the same order, without the scan.
    """

    def __init__(self, backend: SingleWriterJournal) -> None:
        super().__init__(backend)
        self._ids: dict[int, dict[TrialState, list[int]]] = {}  # {study id: {state: ids, ascending}}
        self._state_of: dict[int, TrialState] = {}  # each indexed trial's state in `_ids`
        self._study_of: dict[int, int] = {}  # trial id -> study id, for trials indexed or created
        self._changed: set[int] = set()  # trials whose state may differ from `_state_of`
        self._maybe_waiting: dict[int, set[int]] = {}  # {study id: ids WAITING when last seen, or since}

    def _append_trial(self, study_id: int, log: dict[str, Any], build: Callable[[int, int], FrozenTrial]) -> int:
        trial_id = super()._append_trial(study_id, log, build)
        self._study_of[trial_id] = study_id
        self._changed.add(trial_id)
        if log.get("state") == TrialState.WAITING:
            self._note_waiting(study_id, trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        try:
            updated = super().set_trial_state_values(trial_id, state, values)
        finally:
            self._changed.add(trial_id)
        if state == TrialState.WAITING:
            self._note_waiting(self.get_study_id_from_trial_id(trial_id), trial_id)
        return updated

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if deepcopy:
            return super().get_all_trials(study_id, deepcopy, states)
        with self._thread_lock:
            self._sync_with_backend()
            self._replay_result.get_study(study_id)  # KeyError for an unknown study, as Optuna's
            trials, ids_by_study = replayed_trials(self)  # {trial id: trial}, in id order
            # The server's journal holds one study: then "every trial" is a C-level copy of the
            # replayed trials, not Optuna's Python loop over them (TPE asks for all of them
            # once per ask, and for all but the rare WAITING/FAIL ones to fit).
            ids_of_study = ids_by_study[study_id]
            alone = len(ids_of_study) == len(trials)
            if states is None:
                return list(trials.values()) if alone else [trials[i] for i in ids_of_study]
            if tuple(states) == (TrialState.WAITING,):
                return self._waiting(study_id, trials)
            by_state = self._indexed(study_id)
            lists = [by_state[s] for s in set(states) if by_state.get(s)]
            if alone and sum(map(len, lists)) == len(trials):
                return list(trials.values())
            ids = lists[0] if len(lists) == 1 else sorted(itertools.chain(*lists))
            return list(map(trials.__getitem__, ids))

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        """The study's trial count from the replayed trials' index (Optuna's counts a copied list
        of them: reproducible scheduling asks it on every ask)."""
        if state is not None:
            return super().get_n_trials(study_id, state)
        with self._thread_lock:
            self._sync_with_backend()
            self._replay_result.get_study(study_id)  # KeyError for an unknown study, as Optuna's
            return len(replayed_trials(self)[1][study_id])

    def _note_waiting(self, study_id: int, trial_id: int) -> None:
        with self._thread_lock:  # as `_waiting` reads and prunes them
            known = self._maybe_waiting.get(study_id)
            if known is not None:  # (else the first `_waiting` finds it in its scan)
                known.add(trial_id)

    def _waiting(self, study_id: int, trials: dict[int, FrozenTrial]) -> list[FrozenTrial]:
        """The study's WAITING trials in id order, for the WAITING-only query that `Study.ask`
        (the server's every ask) makes: only the trials found WAITING by one scan at first use,
        or made WAITING since, are looked at, without bringing the state index up to date.
        Under `_thread_lock`."""
        known = self._maybe_waiting.get(study_id)
        if known is None:  # first use: one scan
            known = self._maybe_waiting[study_id] = {
                trial_id_of(t) for t in self._replay_result.get_all_trials(study_id, (TrialState.WAITING,))}
        if not known:
            return []
        waiting = sorted(i for i in known if trials[i].state == TrialState.WAITING)
        known.intersection_update(waiting)  # those taken since are let go
        return [trials[i] for i in waiting]

    def _indexed(self, study_id: int) -> dict[TrialState, list[int]]:
        by_state = self._ids.get(study_id)
        if by_state is None:  # first use: one scan
            by_state = self._ids[study_id] = {}
            for t in self._replay_result.get_all_trials(study_id, None):
                by_state.setdefault(t.state, []).append(trial_id_of(t))
                self._state_of[trial_id_of(t)] = t.state
                self._study_of[trial_id_of(t)] = study_id
        for trial_id in [i for i in self._changed if self._study_of.get(i) == study_id]:
            self._changed.discard(trial_id)
            state, old = replayed_trials(self)[0][trial_id].state, self._state_of.get(trial_id)
            if state != old:
                if old is not None:
                    by_state[old].remove(trial_id)
                bisect.insort(by_state.setdefault(state, []), trial_id)
                self._state_of[trial_id] = state
        return by_state
