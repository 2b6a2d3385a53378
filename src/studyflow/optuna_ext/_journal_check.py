"""Reading a journal record by record, and telling damage from a crash's torn last record.

A crash mid-write leaves only the last line unfinished: that one is safe to cut (Optuna's own
reader skips it too). An unreadable record anywhere else (a partial write on a full disk that
the study went on after, a block zeroed by a crash, a stray edit) is damage: cutting there
would silently drop every later trial, so opening stops instead and `studyflow journal
check|repair` deal with it. Optuna's journal is an operation log (a trial's tell refers to its
create), so a repair keeps the readable prefix, not the readable records after a hole; the
finished trials those held come back from the trial store (`_journal_recover`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from studyflow.errors import JournalDamagedError


@dataclass(frozen=True)
class BadRecord:
    """An unreadable line: 1-based line number, byte offset of its start, and why."""

    line: int
    offset: int
    reason: str


@dataclass
class JournalScan:
    """What a whole-file read found: readable records, bad ones, and where the readable
    prefix ends (the byte a repair or a torn-tail cut keeps up to)."""

    path: Path
    size: int
    lines: int = 0
    records: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    prefix_bytes: int = 0  # bytes before the first bad record
    prefix_records: int = 0

    @property
    def torn_tail(self) -> bool:
        """The only bad record is the last line: what a crash mid-write leaves."""
        return len(self.bad) == 1 and self.bad[0].line == self.lines


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record on a line, or None and why it is unreadable."""
    if not line.endswith(b"\n"):
        return None, "no line end (a write cut short)"
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"not JSON ({exc.msg if isinstance(exc, json.JSONDecodeError) else 'bad UTF-8'})"
    if not isinstance(record, dict) or not isinstance(record.get("op_code"), int):
        return None, "not an Optuna journal record (no op_code)"
    return record, ""


def read_records(path: Path) -> Iterator[tuple[int, int, bytes, dict[str, Any] | None, str]]:
    """(line number, byte offset, raw line, record or None, why unreadable) for every line."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            record, why = _parse(line)
            yield number, offset, line, record, why
            offset += len(line)


def scan(path: str | Path) -> JournalScan:
    """Read the whole journal and list its unreadable records (it is not changed)."""
    path = Path(path)
    result = JournalScan(path, path.stat().st_size)
    for number, offset, line, record, why in read_records(path):
        result.lines = number
        if record is None:
            result.bad.append(BadRecord(number, offset, why))
            continue
        result.records += 1
        if not result.bad:
            result.prefix_records += 1
            result.prefix_bytes = offset + len(line)
    return result


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a journal about to be appended to. A torn last record is cut off (a
    crash mid-write); any other unreadable record raises `JournalDamagedError` naming it, and
    the file is left as it was. (One loop without `read_records`: a resume reads every record.)"""
    records: list[dict[str, Any]] = []
    append, loads = records.append, json.loads
    torn: tuple[int, int, str] | None = None  # (line, offset, why) of an unreadable line
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if torn is not None:  # an unreadable line with more after it: damage, not a crash
                raise damaged(path, *torn)
            try:
                record = loads(line)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                record = None
            if line[-1:] == b"\n" and type(record) is dict and "op_code" in record:
                append(record)
                offset += len(line)
            else:
                torn = (number, offset, _parse(line)[1] or "not an Optuna journal record (no op_code)")
    if torn is not None:
        os.truncate(path, offset)
    return records


def damaged(path: Path, line: int, offset: int, why: str) -> JournalDamagedError:
    return JournalDamagedError(
        f"{path}: unreadable journal record at line {line} (byte {offset}): {why}; later records "
        f"would be lost, so the file is left as it is: `studyflow journal check {path}`, then "
        f"`studyflow journal repair {path}` keeps the records before it")


def repair(path: str | Path) -> tuple[JournalScan, Path]:
    """Keep the readable prefix of a damaged journal, after copying it to `<path>.bak`.

    Returns the scan it acted on and the backup's path. A journal with nothing to repair,
    or whose backup already exists, is left alone (`JournalDamagedError`)."""
    path = Path(path)
    found = scan(path)
    backup = path.with_name(path.name + ".bak")
    if not found.bad:
        raise JournalDamagedError(f"{path}: all {found.records} records are readable; nothing to repair")
    if backup.exists():
        raise JournalDamagedError(f"{backup} exists: move it away first, so an earlier backup is not lost")
    shutil.copy2(path, backup)
    with open(path, "r+b") as f:
        f.truncate(found.prefix_bytes)
        f.flush()
        os.fsync(f.fileno())
    return found, backup
