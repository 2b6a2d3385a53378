"""Garbage collection of the trial store, and the store-wide lock that keeps it off running studies.

`gc` rewrites the results logs and removes trial folders, so it must never run while a study
writes to the store: a study's server keeps appending to its own log (a rewritten log is a new
file, and the server's later appends would go to the old, unlinked one), and a running trial's
staging folder belongs to no finished trial yet. Every driver holds `<store>/in-use.lock`
shared for as long as it runs a study on the store (`store_in_use`, taken after the study's own
journal lock); gc takes it exclusively, without waiting, and refuses in one line naming the
running study (found by its journal lock, which names the process holding it). A driver that
starts while gc runs waits for it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from studyflow._attrs import KEY_ATTR
from studyflow.errors import JournalDamagedError
from studyflow.errors import StudyLockedError
from studyflow.store._store import TrialStore

_logger = logging.getLogger(__name__)
IN_USE = "in-use.lock"
GC_WAIT_S = 600.0  # how long a starting study waits for a running gc before it fails
_JOURNAL_LOCK = re.compile(r"^(?P<study>.+)-[0-9a-f]{16}$")  # `<study>-<hash>.lock` (driver.ResultsLayout)


def _open_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def store_in_use(root: str | Path, wait_s: float = GC_WAIT_S) -> Iterator[None]:
    """Hold the store shared while a study runs on it: `gc` refuses meanwhile, and a study
    started while gc runs waits for it (up to `wait_s`, then fails naming the gc)."""
    path = Path(root) / IN_USE
    fd = _open_lock(path)
    try:
        deadline, told = time.monotonic() + wait_s, False
        while not _flock(fd, fcntl.LOCK_SH):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "studyflow store gc"
            if time.monotonic() > deadline:
                raise StudyLockedError(f"{path}: the trial store is held by {holder} for longer than "
                                       f"{wait_s:g} s; wait for it or stop that process")
            if not told:
                _logger.info("%s: waiting for %s to finish", path, holder)
                told = True
            time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def running_studies(root: str | Path) -> list[tuple[str, str, Path]]:
    """(study, holder, journal) of every study whose journal lock some driver holds now."""
    running = []
    for lock in sorted((Path(root) / "journals").glob("*.lock")):
        fd = os.open(lock, os.O_RDWR)
        try:
            if _flock(fd, fcntl.LOCK_EX):
                continue
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
        finally:
            os.close(fd)
        match = _JOURNAL_LOCK.match(lock.stem)
        running.append((match["study"] if match else lock.stem, holder, lock.with_suffix(".log")))
    return running


def referenced_keys(journal_dir: str | Path) -> set[str]:
    """Every trial key that some study journal under `journal_dir` refers to (`referenced`)."""
    return referenced(journal_dir)[0]


def referenced(journal_dir: str | Path) -> tuple[set[str], set[tuple[str, int]]]:
    """Every trial key that some study journal under `journal_dir` refers to, and the (key,
    number) of every trial a journal holds unfinished (RUNNING or WAITING: a killed run's, until
    its resume settles it), whose staging folder gc keeps. Read from the records as they are
    (an Optuna replay raised a traceback on a hole): a `<journal>.bak` that `journal repair`
    left counts too, so the stored trials it could not re-add stay. A journal with an
    unreadable record before its end raises `JournalDamagedError`: the keys in the hole are
    unknown, and its repair re-adds trials from the store."""
    keys: set[str] = set()
    unfinished: set[tuple[str, int]] = set()
    for journal in sorted(Path(journal_dir).glob("*.log")) + sorted(Path(journal_dir).glob("*.log.bak")):
        found, running = _keys_in(journal, damaged_ok=journal.suffix == ".bak")
        keys |= found
        unfinished |= running
    return keys, unfinished


def _keys_in(journal: Path, damaged_ok: bool) -> tuple[set[str], set[tuple[str, int]]]:
    # here, not at the top: `studyflow.store` loads without Optuna
    from optuna.trial import TrialState

    from studyflow._compat import JournalOperation
    from studyflow.optuna_ext._journal_check import read_records

    key_of: dict[int, str] = {}  # trial id (its number: a studyflow journal holds one study) -> key
    state_of: dict[int, int] = {}
    created = 0
    bad: tuple[int, int, str] | None = None  # (line, byte, why) of an unreadable line
    for number, offset, _, record, why in read_records(journal):
        if bad is not None and not damaged_ok:  # more after an unreadable line: not a torn tail
            raise JournalDamagedError(
                f"{journal}: unreadable journal record at line {bad[0]} (byte {bad[1]}): {bad[2]}; the store "
                f"is not collected (the keys in the hole are unknown): `studyflow journal repair {journal}` "
                f"first, then gc")
        if record is None:
            bad = bad or (number, offset, why)
            continue
        op, trial_id, attrs = record["op_code"], record.get("trial_id"), None
        if op == JournalOperation.CREATE_TRIAL:
            trial_id, created = created, created + 1
            state_of[trial_id] = record.get("state", TrialState.RUNNING)
            attrs = record.get("system_attrs")
        elif op == JournalOperation.SET_TRIAL_SYSTEM_ATTR:
            attrs = record.get("system_attr")
        elif op == JournalOperation.SET_TRIAL_STATE_VALUES and isinstance(trial_id, int):
            state_of[trial_id] = record.get("state")
        if isinstance(attrs, dict) and isinstance(attrs.get(KEY_ATTR), str) and isinstance(trial_id, int):
            key_of[trial_id] = attrs[KEY_ATTR]
    unfinished = (TrialState.RUNNING, TrialState.WAITING)
    running = {(key, n) for n, key in key_of.items() if state_of.get(n, TrialState.RUNNING) in unfinished}
    return set(key_of.values()), running


def gc(root: str | Path) -> tuple[int, int]:
    """Remove store entries no study journal refers to; return (entries removed, bytes freed).
    Refuses (`StudyLockedError`, one line naming the study) while a study runs on the store."""
    root = Path(root)
    path = root / IN_USE
    fd = _open_lock(path)
    try:
        if not _flock(fd, fcntl.LOCK_EX):
            running = running_studies(root)
            if running:
                study, holder, journal = running[0]
                more = f" (and {len(running) - 1} more)" if len(running) > 1 else ""
                what = f"study {study} is running{more}: {holder}, journal {journal}"
            else:
                what = "a study is starting or running on it"
            raise StudyLockedError(f"{root}: not collected: {what}; run gc when it has finished")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"studyflow store gc: pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        keys, unfinished = referenced(root / "journals")
        return TrialStore(root).prune(keys, unfinished)
    finally:
        os.close(fd)
