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
# Bytes a file may grow to in the disk-full run, and its study's size: each loop is leased up to
# 257 random trials at once, each journaled when leased (~0.5 kB), so the journal holds several
# such batches and many told trials before it fills (~0.8 kB a trial in all).
LIMIT = 1_000_000
FILLED_TRIALS = 4000
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


def _told(journal: Path) -> dict[str, tuple[int, float]]:
    """The journal's COMPLETE trials now: key -> (number, value)."""
    study = optuna.load_study(study_name="study", storage=JournalStorage(JournalFileBackend(str(journal))))
    return {t.system_attrs["studyflow:key"]: (t.number, t.values[0]) for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}


def _zero(journal: Path, line: int) -> bytes:
    """A block zeroed by a crash: the line's bytes become zeros, its line end stays."""
    lines = journal.read_bytes().splitlines(keepends=True)
    damaged = b"".join(lines[:line]) + b"\0" * (len(lines[line]) - 1) + b"\n" + b"".join(lines[line + 1:])
    journal.write_bytes(damaged)
    return damaged


def _assert_resumed_with_every_told_trial(tmp_path: Path, told: dict[str, tuple[int, float]]) -> pd.DataFrame:
    """The resumed run's table has every trial told COMPLETE before the damage, under its own
    number with its own value, and exactly N_TRIALS COMPLETE: none re-run, none extra."""
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == N_TRIALS
    assert trials["number"].is_unique and complete["key"].is_unique
    assert {k: (n, v) for k, n, v in zip(complete["key"], complete["number"], complete["value"])} == told
    assert not complete["cached"].any()  # re-added from the store, not asked again and answered from it
    return trials


def test_a_journal_damaged_mid_file_stops_the_next_run_then_check_and_repair_let_it_resume(tmp_path):
    _write_study(tmp_path)
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    journal = _journal(tmp_path)
    told = _told(journal)
    assert len(told) == N_TRIALS
    lines = journal.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    offset = sum(map(len, lines[:middle]))
    damaged = _zero(journal, middle)

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
    assert journal.read_bytes().startswith(b"".join(lines[:middle]))  # the prefix, then the re-added trials
    assert "recovered" in repair.stdout and "from the trial store" in repair.stdout, repair.stdout
    assert _studyflow(tmp_path, "journal", "check", str(journal)).returncode == 0
    recovered = [t for t in optuna.load_study(study_name="study", storage=JournalStorage(
        JournalFileBackend(str(journal)))).trials if "studyflow:recovered" in t.system_attrs]
    assert recovered and all(t.system_attrs["studyflow:recovered"] == t.number for t in recovered)

    _assert_resumed_with_every_told_trial(tmp_path, told)


def test_repair_recovers_a_trial_whose_create_record_was_zeroed_and_no_other_runs_trials(tmp_path):
    """The hole is a trial's own create record (its key and params gone from the journal); the
    store also holds another run of the same study name (another seed: another journal), whose
    trials must not come in."""
    _write_study(tmp_path)
    other = yaml.safe_load((tmp_path / "study.yaml").read_text())
    other["sampler"]["seed"] = 5
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(other))
    assert _run(tmp_path).returncode == 0
    (first,) = (tmp_path / "results/.store/journals").glob("*.log")
    _write_study(tmp_path)
    assert _run(tmp_path).returncode == 0
    (journal,) = set((tmp_path / "results/.store/journals").glob("*.log")) - {first}
    told = _told(journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    creates = [i for i, line in enumerate(lines) if line.startswith(b'{"op_code":4')]
    _zero(journal, creates[len(creates) // 2])

    repair = _studyflow(tmp_path, "journal", "repair", str(journal))
    assert repair.returncode == 0, repair.stderr
    assert "could not" not in repair.stdout, repair.stdout
    _assert_resumed_with_every_told_trial(tmp_path, told)



def test_gc_beside_a_damaged_journal_refuses_in_one_line_and_removes_nothing_repair_needs(tmp_path):
    """`store gc` read the journals with Optuna, which raised a JSONDecodeError traceback on the
    hole; it must not remove the stored trials a repair re-adds (their keys may be in the hole)."""
    _write_study(tmp_path)
    assert _run(tmp_path).returncode == 0
    journal = _journal(tmp_path)
    told = _told(journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    _zero(journal, len(lines) // 2)

    gc = _studyflow(tmp_path, "store", "gc")
    assert gc.returncode == 1 and "Traceback" not in gc.stderr, gc.stderr
    (error,) = _error_lines(gc)
    assert f"{journal.relative_to(tmp_path)}: unreadable journal record at line {len(lines) // 2 + 1}" in error
    assert "journal repair" in error and "not collected" in error

    assert _studyflow(tmp_path, "journal", "repair", str(journal)).returncode == 0
    gc = _studyflow(tmp_path, "store", "gc")
    assert gc.returncode == 0 and gc.stdout.startswith("removed 0 entries"), gc.stdout + gc.stderr
    _assert_resumed_with_every_told_trial(tmp_path, told)



def test_repair_recovers_the_trials_a_study_was_answered_from_the_store_by_another_study(tmp_path):
    """Two studies of the same objective and parameters share stored results (README): the
    second's trials were all answered from the first's. Its stored lines name the first study,
    so a repair of the second's journal re-added none of them, and the resume ran new trials."""
    _write_study(tmp_path)
    assert _run(tmp_path).returncode == 0
    (tmp_path / "twin.yaml").write_text((tmp_path / "study.yaml").read_text())
    assert _studyflow(tmp_path, "run", "twin.yaml", "--workers", "2").returncode == 0
    (journal,) = (tmp_path / "results/.store/journals").glob("twin-*.log")
    study = optuna.load_study(study_name="twin", storage=JournalStorage(JournalFileBackend(str(journal))))
    told = {t.number: t.values[0] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(told) == N_TRIALS and all(t.system_attrs.get("studyflow:cached") for t in study.trials)
    _zero(journal, len(journal.read_bytes().splitlines()) // 3)

    repair = _studyflow(tmp_path, "journal", "repair", str(journal))
    assert repair.returncode == 0, repair.stderr
    assert "recovered 0 " not in repair.stdout and "could not" not in repair.stdout, repair.stdout
    resumed = _studyflow(tmp_path, "run", "twin.yaml", "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results/studies/twin/trials.parquet")
    complete = trials[trials["state"] == "COMPLETE"]
    assert dict(zip(complete["number"], complete["value"])) == told  # each under its own number: none re-run


def test_failed_trials_after_the_hole_leave_gaps_and_every_complete_one_keeps_its_number(tmp_path):
    """Failed trials are not in the store: the numbers they had become trials marked not run
    (left out of the table and the counts), so the stored ones after them keep their numbers."""
    study = {"objective": "sf_objectives:raises_when_large", "search_space": {"x": {"type": "float", "low": 0,
             "high": 1}}, "sampler": {"name": "random", "seed": 3}, "budget": {"n_trials": N_TRIALS},
             "prefetch": 0}  # each trial created as it is asked: failed ones after the hole are gaps
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert _run(tmp_path).returncode == 0
    journal = _journal(tmp_path)
    told = _told(journal)
    creates = [i for i, line in enumerate(journal.read_bytes().splitlines()) if line.startswith(b'{"op_code":4')]
    _zero(journal, creates[1])  # trial 1's create: the seed's failed trials (1, 4, 5 of 23) are after it

    repair = _studyflow(tmp_path, "journal", "repair", str(journal))
    assert repair.returncode == 0, repair.stderr
    assert "numbers between them had no stored result (marked not run)" in repair.stdout, repair.stdout
    trials = _assert_resumed_with_every_told_trial(tmp_path, told)
    assert (trials["error"].fillna("").str.startswith("Lost:")).sum() == 0  # placeholders stay out


def test_repair_reports_stored_trials_whose_distributions_it_cannot_know(tmp_path):
    """A define-by-run study cut right after its study record: no kept trial and no search
    space says what `x`, `n`, `kind` were drawn from, so the stored trials are named, not guessed."""
    study = {"objective": "sf_objectives:quadratic", "sampler": {"name": "random", "seed": 3},
             "budget": {"n_trials": 6}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert _run(tmp_path).returncode == 0
    journal = _journal(tmp_path)
    _zero(journal, 1)  # the first trial's create: the prefix is the study alone

    repair = _studyflow(tmp_path, "journal", "repair", str(journal))
    assert repair.returncode == 0, repair.stderr
    assert "recovered 0 finished trials" in repair.stdout, repair.stdout
    assert "could not re-add 6 stored trials: 0: distribution of kind, n, x unknown" in repair.stdout
    # the trials it names are still in the store (their keys in the `.bak` alone): gc keeps them
    gc = _studyflow(tmp_path, "store", "gc")
    assert gc.returncode == 0 and gc.stdout.startswith("removed 0 entries"), gc.stdout + gc.stderr


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
    assert 100 < len(told) < FILLED_TRIALS  # the journal filled mid-study

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
