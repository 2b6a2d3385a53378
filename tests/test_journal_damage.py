"""A damaged journal stops the run instead of losing trials; `studyflow journal check|repair`;
a disk that fills mid-study stops it in one line, and a resume finds every told trial.

Real `studyflow run` processes on real files: the damage is done to the journal a real study
wrote, and the full disk is a real EFBIG from the kernel (RLIMIT_FSIZE in the run's process).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from studyflow.errors import JournalDamagedError
from studyflow.optuna_ext import SingleWriterJournal
from studyflow.optuna_ext import repair_journal
from studyflow.optuna_ext import scan_journal

N_TRIALS = 20
LIMIT = 200_000  # bytes a file may grow to in the disk-full run
FILLED_TRIALS = 400
RECORD = {"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}


def _journal_with(tmp_path: Path, *tail: bytes) -> Path:
    path = tmp_path / "j.log"
    path.write_bytes(b"".join(json.dumps(RECORD).encode() + b"\n" for _ in range(3)) + b"".join(tail))
    return path


@pytest.mark.parametrize("tail", [b'{"op_code": 4, "worker', b"\0\0\0\0", b"garbage\n"])
def test_a_torn_last_record_is_cut_and_the_rest_kept(tmp_path, tail):
    path = _journal_with(tmp_path, tail)
    journal = SingleWriterJournal(path)
    journal.close()
    assert path.read_bytes() == (json.dumps(RECORD).encode() + b"\n") * 3
    assert len(journal.read_logs(0)) == 3


def test_an_unreadable_record_before_the_end_stops_the_open_and_leaves_the_file(tmp_path):
    good = json.dumps(RECORD).encode() + b"\n"
    path = _journal_with(tmp_path, b'{"op_code": 4, "wor\n', good, b"[1, 2]\n", good)
    before = path.read_bytes()
    with pytest.raises(JournalDamagedError) as info:
        SingleWriterJournal(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}: unreadable journal record at line 4 (byte {3 * len(good)})" in message
    assert path.read_bytes() == before

    found = scan_journal(path)
    assert (found.records, found.prefix_records, found.lines) == (5, 3, 7)
    assert [(b.line, b.offset) for b in found.bad] == [(4, 3 * len(good)), (6, 3 * len(good) + 20 + len(good))]
    assert not found.torn_tail


def test_repair_keeps_the_prefix_after_a_backup_and_refuses_to_overwrite_the_backup(tmp_path):
    path = _journal_with(tmp_path, b"\0" * 10 + b"\n", json.dumps(RECORD).encode() + b"\n")
    before = path.read_bytes()
    found, backup = repair_journal(path)
    assert backup.read_bytes() == before
    assert path.read_bytes() == before[: found.prefix_bytes] and found.prefix_records == 3
    assert len(SingleWriterJournal(path).read_logs(0)) == 3
    with pytest.raises(JournalDamagedError, match="nothing to repair"):
        repair_journal(path)
    path.write_bytes(before)
    with pytest.raises(JournalDamagedError, match=r"j\.log\.bak exists"):
        repair_journal(path)


def test_repair_refuses_a_journal_whose_study_runs(tmp_path, capsys):
    from studyflow.cli import main
    from studyflow.driver._lock import StudyLock

    path = _journal_with(tmp_path, b"\0\n", json.dumps(RECORD).encode() + b"\n")
    before = path.read_bytes()
    with StudyLock(path.with_suffix(".lock")):  # what a running driver holds
        assert main(["journal", "repair", str(path)]) == 1
    assert "study is already being run by pid" in capsys.readouterr().err
    assert path.read_bytes() == before and not Path(f"{path}.bak").exists()


# --- a real study's journal -------------------------------------------------------------

def _write_study(tmp_path: Path, n_trials: int = N_TRIALS) -> Path:
    study = {"objective": "sf_objectives:instant", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "sampler": {"name": "random", "seed": 3}, "budget": {"n_trials": n_trials}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _studyflow(tmp_path: Path, *args: str, preexec=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studyflow.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)


def _run(tmp_path: Path, **kwargs) -> subprocess.CompletedProcess:
    return _studyflow(tmp_path, "run", "study.yaml", "--workers", "2", **kwargs)


def _journal(tmp_path: Path) -> Path:
    (journal,) = (tmp_path / "results/.store/journals").glob("*.log")
    return journal


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("studyflow: error:")]


def test_a_journal_damaged_mid_file_stops_the_next_run_then_check_and_repair_let_it_resume(tmp_path):
    _write_study(tmp_path)
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    journal = _journal(tmp_path)
    lines = journal.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    offset = sum(map(len, lines[:middle]))
    # a block zeroed by a crash: the middle record's bytes become zeros, its line end stays
    damaged = b"".join(lines[:middle]) + b"\0" * (len(lines[middle]) - 1) + b"\n" + b"".join(lines[middle + 1:])
    journal.write_bytes(damaged)

    rerun = _run(tmp_path)
    assert rerun.returncode == 1
    (error,) = _error_lines(rerun)
    assert f"{journal}: unreadable journal record at line {middle + 1} (byte {offset})" in error
    assert "Traceback" not in rerun.stderr
    assert journal.read_bytes() == damaged  # nothing cut: every later trial is still there

    check = _studyflow(tmp_path, "journal", "check", str(journal))
    assert check.returncode == 1
    assert f"{len(lines) - 1} records read, 1 unreadable" in check.stdout
    assert f"line {middle + 1} (byte {offset})" in check.stdout

    repair = _studyflow(tmp_path, "journal", "repair", str(journal))
    assert repair.returncode == 0, repair.stderr
    assert Path(f"{journal}.bak").read_bytes() == damaged
    assert journal.read_bytes() == b"".join(lines[:middle])
    assert _studyflow(tmp_path, "journal", "check", str(journal)).returncode == 0

    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == N_TRIALS
    assert trials["number"].is_unique


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: every file it (and its workers) writes stops at `limit`
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A study whose files may not grow past LIMIT bytes, run until its journal hits that: the
    run's result, and the COMPLETE trials (number -> values) Optuna reads from its journal."""
    tmp_path = tmp_path_factory.mktemp("filled")
    _write_study(tmp_path, FILLED_TRIALS)
    full = _run(tmp_path, preexec=_file_size_limit(LIMIT), timeout=300)
    journal = _journal(tmp_path)
    told = {t.number: t.values for t in optuna.load_study(
        study_name="study", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
        if t.state == optuna.trial.TrialState.COMPLETE}
    return tmp_path, full, told


def test_a_disk_that_fills_mid_study_stops_it_in_one_line_and_a_resume_keeps_every_told_trial(filled):
    tmp_path, full, told = filled
    assert full.returncode == 1, full.stderr[-3000:]
    (error,) = _error_lines(full)
    journal = _journal(tmp_path)
    assert f"{journal}: cannot write the study journal (File too large); the study stops" in error
    assert journal.stat().st_size <= LIMIT
    assert 10 < len(told) < FILLED_TRIALS  # the journal (~0.4 kB a record) filled mid-study

    resumed = _run(tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == FILLED_TRIALS
    complete = trials[trials["state"] == "COMPLETE"].set_index("number")["value"]
    assert {n: complete[n] for n in told} == {n: v[0] for n, v in told.items()}


def test_a_disk_that_fills_mid_study_logs_one_traceback_at_most(filled):
    """The server stops the study at the first failed journal write and says so once; its loops
    are told to stop, not left to die and be restarted."""
    _, full, _ = filled
    assert full.stderr.count("Traceback (most recent call last)") <= 1, full.stderr
    assert full.stderr.count("cannot write the study journal") == 2, full.stderr  # the server's, the driver's
    assert "trial loop ended" not in full.stderr, full.stderr
