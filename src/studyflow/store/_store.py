"""The content-addressed trial store: results in `<root>/results/*.jsonl`, artifacts in
`<root>/trials/<k2>/<key>/artifacts/` (`<k2>`: the key's first two characters).

A trial's key hashes what decides its result: the objective's identity and code version, the
data's sha256, the settings that reach the objective, and the trial's parameters. A key with a
COMPLETE result is answered from the store instead of running the objective again.

The study server is the only writer of its results. It appends them as JSON lines to a log of
its own (`results/<pid>-<id>.jsonl`), so studies running at once never interleave lines, and a
torn last line (a crash mid-write) is skipped on reading: the journal still has the trial, so
only a cache entry is lost. A folder and a file per result (as stores before this layout kept
them in `trials/<k2>/<key>/result.json`, which are still read) cost more to create than
everything else an instant trial costs; an append costs next to nothing. The objective writes
its files into a staging folder (`<key>/.staging-<trial number>`, made when it first asks for
`trial.artifact_dir`), which the server renames to `artifacts/` when the trial completes, so a
crashed trial never leaves half its artifacts under the key.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Collection
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import TextIO

from studyflow._hashing import canonical_json
from studyflow._hashing import sha256_text
from studyflow._io import write_text
from studyflow._json import reused_encoder

_logger = logging.getLogger(__name__)


def trial_key(key_base: str, params: dict[str, Any]) -> str:
    return sha256_text(key_base + "|" + canonical_json(params))[:32]


_RESULT_ENCODER = reused_encoder((", ", ": "), sort_keys=True, default=str)


def _encode(result: StoredResult) -> str:
    # its fields as they are: `asdict` would deep-copy params and user attrs only to read them
    return _RESULT_ENCODER(vars(result)) + "\n"


def trial_seed(key: str) -> int:
    """A per-trial seed derived from the key: the same trial gets the same seed everywhere."""
    return int(key[:8], 16)


@dataclass
class StoredResult:
    key: str
    state: str
    values: list[float] | None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    number: int | None = None
    # constraints and artifact records set on the trial: a trial answered from here gets them
    system_attrs: dict[str, Any] = field(default_factory=dict)


class TrialStore:
    """Filesystem store under `root` (default `results/.store`).

    Results are read once (`load_index`, or at the first lookup): a store sees what other
    processes wrote before that, not after, so two studies that run the same key at the same
    moment may both evaluate it. The server records results as it tells them (`put_later`:
    lookups see them at once) and appends a batch's results in one write at the end of the
    batch (`write_pending`), before the journal is synced; threads move artifacts (a folder
    rename: the slow part) while the server answers the next ask, each key always on the same
    thread, so a key's later artifacts land last.
    """

    WRITERS = 4  # moving artifacts: a folder create + rename each, in parallel on the disk

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.trials = self.root / "trials"
        self._trials_str = str(self.trials)
        self.logs = self.root / "results"
        self._results: dict[str, StoredResult] | None = None  # every stored result, once read
        self._sizes: dict[str, int] = {}  # bytes of each key's stored result
        self._unwritten: list[str] = []  # recorded results, as log lines, not yet written
        self._lock = threading.Lock()  # the dicts; never held across file system calls
        self._log_lock = threading.Lock()  # this store's log file
        self._log: TextIO | None = None  # this store's own results log, opened at the first put
        self._write_failed: str | None = None  # why the log could not be written (see `_append`)
        self._queues: list[queue.Queue[tuple[str, int, str] | None]] | None = None  # artifact moves

    def entry(self, key: str) -> Path:
        """The trial's folder: its artifacts and the objective's staging folders."""
        return Path(self._entry_path(key))

    def _entry_path(self, key: str) -> str:
        """`entry` as a string, built as one f-string (a `Path`'s string ends in no separator,
        so it is `os.path.join`'s): the server names a staging folder in it per ask."""
        return f"{self._trials_str}/{key[:2]}/{key}"

    def load_index(self) -> None:
        """Read every stored result once, so a lookup costs no file system call."""
        results: dict[str, StoredResult] = {}
        sizes: dict[str, int] = {}
        for path, text in self._stored_texts():
            try:
                result = StoredResult(**json.loads(text))
            except (ValueError, TypeError):
                _logger.warning("trial store: skipping a torn or unreadable result in %s", path)
                continue
            results[result.key], sizes[result.key] = result, len(text)
        with self._lock:
            self._results, self._sizes = results, sizes

    def _stored_texts(self) -> Iterator[tuple[Path, str]]:
        for log in sorted(self.logs.glob("*.jsonl")):
            with open(log, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield log, line
        for old in sorted(self.trials.glob("*/*/result.json")):  # the layout before results logs
            yield old, old.read_text(encoding="utf-8")

    def put_later(self, result: StoredResult, number: int | None = None, staging_key: str | None = None) -> None:
        """Record `result` now (lookups see it at once) and write it with the next
        `write_pending`; for trial `number`, a writer thread moves its staged artifacts."""
        text = _encode(result)
        self._index(result, text)
        with self._lock:
            self._unwritten.append(text)
        if number is None:
            return
        if self._queues is None:
            self._queues = [queue.Queue() for _ in range(self.WRITERS)]
            for i, q in enumerate(self._queues):
                threading.Thread(target=self._move_behind, args=(q,), name=f"studyflow-store-{i}",
                                 daemon=True).start()
        self._queues[hash(result.key) % len(self._queues)].put((staging_key or result.key, number, result.key))

    def write_pending(self) -> None:
        """Append every result recorded since the last call: one write for a server's batch."""
        with self._lock:
            texts, self._unwritten = self._unwritten, []
        if texts:
            try:
                self._append("".join(texts))
            except OSError:
                pass  # logged once by `_append`; the journal still has every trial

    def _move_behind(self, q: queue.Queue[tuple[str, int, str] | None]) -> None:
        while (item := q.get()) is not None:
            staging_key, number, key = item
            try:
                self.commit_artifacts(staging_key, number, key)
            except OSError as exc:
                _logger.error("trial store: could not move the artifacts of %s: %s", key, exc)
            finally:
                q.task_done()

    def drain(self) -> None:
        """Write what is recorded and wait until every artifact move is done (end of a study)."""
        self.write_pending()
        for q in self._queues or []:
            q.join()

    def close(self) -> None:
        self.drain()
        if self._queues is not None:
            for q in self._queues:
                q.put(None)
            self._queues = None
        with self._log_lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def get(self, key: str) -> StoredResult | None:
        return self._loaded().get(key)

    def _loaded(self) -> dict[str, StoredResult]:
        if self._results is None:
            self.load_index()
        assert self._results is not None
        return self._results

    def put(self, result: StoredResult) -> None:
        text = _encode(result)
        self._append(text)
        self._index(result, text)

    def _index(self, result: StoredResult, text: str) -> None:
        """Enter `result` (stored as `text`) in the in-memory index: lookups see it at once."""
        loaded = self._loaded()
        with self._lock:
            loaded[result.key], self._sizes[result.key] = result, len(text)

    def _append(self, text: str) -> None:
        """Append to this store's log. The first failed write (a full disk, an I/O error) is
        logged in one line and ends the log: later results are not written (a line written after
        a torn one would be lost with it), and since the journal holds every told trial, only
        answers from the store for later runs are lost. Raises OSError when not written."""
        with self._log_lock:
            if self._write_failed is not None:
                raise OSError(self._write_failed)
            try:
                if self._log is None:
                    self.logs.mkdir(parents=True, exist_ok=True)
                    self._log = open(self.logs / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl", "a",
                                     encoding="utf-8")
                self._log.write(text)
                self._log.flush()  # in the OS: it survives this process being killed
            except OSError as exc:
                self._write_failed = f"cannot write results to {self.logs} ({exc.strerror or exc})"
                _logger.error("trial store: %s; the study goes on (its journal has every trial), but "
                              "its results will not be answered from the store", self._write_failed)
                self._drop_log()
                raise

    def _drop_log(self) -> None:
        """Close a log that failed, discarding what its buffer still holds."""
        log, self._log = self._log, None
        if log is not None:
            try:
                log.close()
            except OSError:
                pass

    def staging_dir(self, key: str, number: int) -> Path:
        return Path(self.staging_path(key, number))

    def staging_path(self, key: str, number: int) -> str:
        """`staging_dir` as a string, built without pathlib: the server names one per ask."""
        return f"{self._entry_path(key)}/.staging-{number}"

    def artifacts_dir(self, key: str) -> Path:
        return self.entry(key) / "artifacts"

    def commit_artifacts(self, key: str, number: int, final_key: str | None = None) -> None:
        """Move trial `number`'s staged files (under `key`) to `final_key`'s artifacts."""
        staging = self.staging_dir(key, number)
        if not staging.exists():
            return
        target = self.artifacts_dir(final_key or key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)

    def discard_staging(self, key: str, number: int) -> None:
        shutil.rmtree(self.staging_dir(key, number), ignore_errors=True)

    def keys_with_artifacts(self) -> set[str]:
        """Keys whose artifacts folder exists: one directory walk, not a stat per trial."""
        return {p.parent.name for p in self.trials.glob("*/*/artifacts") if p.is_dir()}

    def keys(self) -> list[str]:
        """Every key with a result or a folder (artifacts, or a trial that never finished)."""
        folders = {p.name for p in self.trials.glob("*/*") if p.is_dir()}
        return sorted(set(self._loaded()) | folders)

    def size_bytes(self, key: str) -> int:
        self._loaded()
        old_result = self.entry(key) / "result.json"  # counted in _sizes already
        files = [f for f in self.entry(key).rglob("*") if f.is_file() and f != old_result]
        return self._sizes.get(key, 0) + sum(f.stat().st_size for f in files)

    def prune(self, keep: set[str], unfinished: Collection[tuple[str, int]] = ()) -> tuple[int, int]:
        """Remove every key not in `keep`, and the staging folders of trials not `unfinished`
        ((key, number): a journal still holds them running); return (keys removed, bytes freed).
        Not while a study writes to this store: its log is rewritten without the removed keys' lines."""
        self.load_index()
        drop = [key for key in self.keys() if key not in keep]
        freed = sum(self.size_bytes(key) for key in drop)
        for log in sorted(self.logs.glob("*.jsonl")):
            with open(log, encoding="utf-8") as f:
                lines = f.readlines()
            kept = [line for line in lines if _line_key(line) in keep]
            if not kept:
                log.unlink()
            elif len(kept) < len(lines):
                write_text(log, "".join(kept))
        for key in drop:
            shutil.rmtree(self.entry(key), ignore_errors=True)
        freed += self._prune_staging(unfinished)
        self.load_index()
        return len(drop), freed

    def _prune_staging(self, unfinished: Collection[tuple[str, int]]) -> int:
        """Remove the staging folders left by trials that never completed (a run killed
        mid-trial: its resume re-runs the trial under a new number), and key folders left
        empty; return the bytes freed. A trial a journal still holds running keeps its own."""
        freed = 0
        for staging in self.trials.glob("*/*/.staging-*"):
            number = staging.name.removeprefix(".staging-")
            if number.isdigit() and (staging.parent.name, int(number)) in unfinished:
                continue
            freed += sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
            shutil.rmtree(staging, ignore_errors=True)
            try:
                staging.parent.rmdir()  # only if empty: no artifacts, no old-layout result
            except OSError:
                pass
        return freed


def _line_key(line: str) -> str | None:
    try:
        return json.loads(line).get("key")
    except ValueError:
        return None
