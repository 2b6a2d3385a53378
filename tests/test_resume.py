"""A killed run resumes from its journal: finished trials are not evaluated again.

Evaluations are counted through a file the test objective appends to, so "not evaluated
again" is measured, not assumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from studyflow._attrs import NOT_RUN_ATTR

from conftest import REPO
from conftest import TESTS

pytestmark = pytest.mark.slow
N_TRIALS = 20


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    shutil_copy_workflow(tmp_path)
    (tmp_path / "config" / "studies").mkdir(parents=True)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump({"studies": ["counted"]}))
    study = {"objective": "sf_objectives:counted", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "sampler": {"name": "random", "seed": 2}, "budget": {"n_trials": N_TRIALS}}
    (tmp_path / "config" / "studies" / "counted.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.setenv("SF_COUNT_FILE", str(tmp_path / "evaluations.txt"))
    monkeypatch.setenv("SF_SLEEP", "0.25")
    # the test objectives, then what conftest found (the checkout under test, where PYTHONPATH names one)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p))
    return tmp_path


def shutil_copy_workflow(dest: Path) -> None:
    import shutil

    shutil.copy(REPO / "Snakefile", dest)
    shutil.copytree(REPO / "workflow", dest / "workflow")
    shutil.copytree(REPO / "profiles", dest / "profiles")


def evaluations(workdir: Path) -> int:
    path = workdir / "evaluations.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_evaluations(workdir: Path, n: int, proc: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while evaluations(workdir) < n:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def wait_until_unlocked(workdir: Path, limit_s: float = 30) -> None:
    """The orphaned optimize job stops by itself once snakemake is gone; wait for it."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", "studyflow optimize.*--results results"], capture_output=True, text=True)
        pids = [p for p in out.stdout.split() if Path(f"/proc/{p}/cwd").exists() and os.readlink(f"/proc/{p}/cwd") == str(workdir)]
        if not pids:
            return
        time.sleep(0.2)
    raise AssertionError("the orphaned optimize job did not stop")


def assert_resumed_exactly(workdir: Path) -> pd.DataFrame:
    trials = pd.read_parquet(workdir / "results/studies/counted/trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == N_TRIALS
    assert "RUNNING" not in set(trials["state"])
    interrupted = trials[trials["error"].fillna("").str.startswith("Interrupted")]
    assert 1 <= len(interrupted) <= 2  # the trials in flight on the two workers at the kill
    # Every interrupted trial was re-run once with its own parameters...
    retried = trials[trials["retry_of"].notna()]
    assert sorted(retried["retry_of"]) == sorted(interrupted["number"])
    by_number = trials.set_index("number")
    for _, row in retried.iterrows():
        assert row["params_x"] == by_number.loc[row["retry_of"], "params_x"]
    # ...and nothing that finished before the kill was evaluated again: every trial number was
    # evaluated once. A loop starts the trial it holds while its last outcome travels, so each
    # of the two loops may have run one trial the stop then dropped (not in the table).
    evaluated = [int(n) for n in (workdir / "evaluations.txt").read_text().split()]
    assert len(evaluated) == len(set(evaluated))
    assert set(trials["number"]) <= set(evaluated)
    assert len(set(evaluated) - set(trials["number"])) <= 2
    journal = next((workdir / "results/.store/journals").glob("counted-*.log"))
    loaded = optuna.load_study(study_name="counted", storage=JournalStorage(JournalFileBackend(str(journal))))
    run = [t for t in loaded.get_trials() if not t.system_attrs.get(NOT_RUN_ATTR)]
    assert len(run) == len(trials)  # the journal holds every trial of the table
    return trials


def snakemake(workdir: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snakemake", "-c2", *args], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_snakemake_sigkilled_halfway_then_rerun_resumes_the_study(workdir):
    run = snakemake(workdir)
    wait_for_evaluations(workdir, N_TRIALS // 2, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    wait_until_unlocked(workdir)
    assert not (workdir / "results/studies/counted/trials.parquet").exists()
    # Snakemake's own lock outlives a SIGKILL of snakemake: it asks for --unlock first.
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock", "-c1"], cwd=workdir, check=True, capture_output=True)
    rerun = snakemake(workdir)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    assert_resumed_exactly(workdir)


def test_optimize_job_sigkilled_then_plain_rerun_resumes(workdir):
    run = snakemake(workdir)
    wait_for_evaluations(workdir, N_TRIALS // 2, run)
    driver = subprocess.run(["pgrep", "-f", "studyflow optimize"], capture_output=True, text=True).stdout.split()
    mine = [p for p in driver if os.readlink(f"/proc/{p}/cwd") == str(workdir)]
    assert mine, "no optimize job found"
    for pid in mine:
        os.kill(int(pid), signal.SIGKILL)
    out, _ = run.communicate(timeout=120)
    assert run.returncode != 0  # snakemake saw its job die, released its lock
    assert not (workdir / "results/studies/counted/trials.parquet").exists()
    rerun = snakemake(workdir)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    trials = assert_resumed_exactly(workdir)
    assert trials.loc[trials["error"].fillna("").str.startswith("Interrupted"), "error"].str.contains("mid-trial").all()


def _start_api_run(workdir: Path) -> subprocess.Popen:
    script = (
        "import studyflow\n"
        "studyflow.optimize(None, 'config/studies/counted.yaml', n_workers=2, progress=False)\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_python_api_run_killed_then_rerun_resumes(workdir):
    run = _start_api_run(workdir)
    wait_for_evaluations(workdir, N_TRIALS // 2, run)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and its worker processes, at once
    run.wait()
    from studyflow import optimize

    result = optimize(None, workdir / "config/studies/counted.yaml", n_workers=2,
                      results_dir=workdir / "results", progress=False)
    result.write(workdir / "results/studies/counted")
    assert_resumed_exactly(workdir)


def test_ctrl_c_stops_within_seconds_writes_no_output_and_a_rerun_resumes(workdir):
    run = subprocess.Popen(
        [sys.executable, "-m", "studyflow.cli", "run", "config/studies/counted.yaml", "--workers", "2"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    wait_for_evaluations(workdir, N_TRIALS // 2, run)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=15)  # "within a few seconds"
    assert run.returncode == 130, out[-2000:]
    assert "rerun to resume" in out
    assert not (workdir / "results/studies/counted").exists()
    rerun = subprocess.run(
        [sys.executable, "-m", "studyflow.cli", "run", "config/studies/counted.yaml", "--workers", "2"],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_resumed_exactly(workdir)


def test_a_run_interrupted_twice_still_runs_every_interrupted_trial_with_its_params(workdir, monkeypatch):
    """Each Ctrl-C's running trials are re-run with their parameters on the next run. An
    interrupt counted as one of `budget.retries`: the second Ctrl-C, hitting the retries,
    failed them for good, and a retry a loop held unstarted was dropped, so those parameters
    never ran (README: "trials that were running are re-run with the same parameters")."""
    monkeypatch.setenv("SF_SLEEP", "1.0")
    cmd = [sys.executable, "-m", "studyflow.cli", "run", "config/studies/counted.yaml", "--workers", "2"]
    for stop_after in (4, 2):  # the second run is stopped while it runs the first one's retries
        before = evaluations(workdir)
        run = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_evaluations(workdir, before + stop_after, run)
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=30)
        assert run.returncode == 130, out[-2000:]
    trials, interrupted = rerun_interrupted(workdir, cmd)
    assert len(interrupted) >= 3  # two on the first stop, at least one retry on the second


def rerun_interrupted(workdir: Path, cmd: list[str]) -> tuple[list, list]:
    """Rerun the stopped study; its trials and those a stop interrupted, each of which ran
    again with its parameters, every trial of the budget COMPLETE."""
    rerun = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    journal = next((workdir / "results/.store/journals").glob("counted-*.log"))
    trials = optuna.load_study(study_name="counted", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    interrupted = [t for t in trials if t.system_attrs.get("studyflow:error") == "Interrupted: the run was stopped"]
    complete = {t.params["x"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert all(t.params["x"] in complete for t in interrupted)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == N_TRIALS
    return trials, interrupted


def test_a_trial_cut_short_by_a_killed_run_keeps_its_retries_for_a_worker_that_dies(tmp_path, monkeypatch):
    """The resume re-ran a trial that a SIGKILLed run left running as attempt 1, spending one of
    `budget.retries` on the kill (a Ctrl-C does not): when that re-run's worker then died, its
    parameters never ran again, with `retries: 1`."""
    monkeypatch.setenv("SF_STATE_DIR", str(tmp_path))
    study = {"objective": "sf_objectives:killed_then_crashes_once", "prefetch": 0,
             "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "sampler": {"name": "random", "seed": 2}, "budget": {"n_trials": 1, "retries": 1}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "studyflow.cli", "run", "study.yaml", "--workers", "1"]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not (began := list(tmp_path.glob("0.*"))):  # the first trial began: its x names its file
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first = float(began[0].name)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    assert trials.loc[trials["state"] == "COMPLETE", "params_x"].tolist() == [first], trials.to_string()


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and int(stat.parent.name) != pgid:
            members.append(int(stat.parent.name))
    return members


def test_ctrl_c_in_a_terminal_reruns_the_running_trials_even_with_no_retries(workdir):
    """A terminal's Ctrl-C sends SIGINT to the whole process group, the local workers too. A
    worker that took it first died of the KeyboardInterrupt, and its trial was told as
    `WorkerLost` (a retry spent: with `retries: 0` its parameters never ran again) before the
    driver marked it interrupted. The workers here get the signal first, as they may."""
    study = workdir / "config/studies/counted.yaml"
    study.write_text(study.read_text().replace("n_trials: 20", "n_trials: 20\n  retries: 0"))
    assert "retries: 0" in study.read_text()
    cmd = [sys.executable, "-m", "studyflow.cli", "run", "config/studies/counted.yaml", "--workers", "2"]
    run = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    wait_for_evaluations(workdir, 4, run)
    for pid in _group_members(run.pid):
        os.kill(pid, signal.SIGINT)
    time.sleep(1.0)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=30)
    assert run.returncode == 130, out[-2000:]
    trials, interrupted = rerun_interrupted(workdir, cmd)
    assert not [t.number for t in trials if "WorkerLost" in str(t.system_attrs.get("studyflow:error"))]
    assert interrupted


def running(pids: list[int]) -> list[int]:
    """Those of `pids` still running (not gone, not a zombie)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def test_ctrl_c_in_a_terminal_ends_the_programs_trials_started(workdir, monkeypatch):
    """A terminal's Ctrl-C (SIGINT to the whole process group): a program a trial runs (a
    training script it shells out to) that started after the signal, before the driver
    stopped the study, ran on after the run had ended, holding the run's output open."""
    monkeypatch.setenv("SF_CHILD_PIDS", str(workdir / "children.txt"))
    study = workdir / "config/studies/counted.yaml"
    study.write_text(study.read_text().replace("sf_objectives:counted", "sf_objectives:runs_a_child"))
    cmd = [sys.executable, "-m", "studyflow.cli", "run", "config/studies/counted.yaml", "--workers", "2"]
    run = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    children = workdir / "children.txt"
    deadline = time.monotonic() + 60
    while len(children.read_text().split() if children.exists() else []) < 2:
        assert run.poll() is None and time.monotonic() < deadline, "the trials did not start their programs"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert run.wait(timeout=30) == 130
    time.sleep(1.0)
    left = running([int(pid) for pid in children.read_text().split()])
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "programs that trials started ran on after the run"


# --- Step 13: max_failures and timeout_s mean the same on a resumed study as on one run ---

def _journal_trials(results: Path) -> list:
    journal = next((results / ".store/journals").glob("study-*.log"))
    return optuna.load_study(study_name="study", storage=JournalStorage(JournalFileBackend(str(journal)))).trials


@pytest.fixture(scope="module")
def client2():
    from studyflow.driver import connect

    with connect(2) as client:
        yield client


def test_a_resumed_study_counts_earlier_runs_failures_toward_max_failures(client2, tmp_path):
    """A study stopped for too many failures stops again on a rerun, before running anything:
    the journal's failures count as they did in the run that stopped."""
    from studyflow import StudyAbortedError
    from studyflow import optimize

    cfg = {"objective": "sf_objectives:always_raises", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
           "sampler": {"name": "random", "seed": 1}, "concurrency": 1, "prefetch": 0,
           "budget": {"n_trials": 20, "max_failures": 2}}
    for _ in range(2):
        with pytest.raises(StudyAbortedError, match=r"too many failures: 3 > budget.max_failures=2"):
            optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
        failed = [t for t in _journal_trials(tmp_path) if t.state.name == "FAIL" and not t.system_attrs.get(NOT_RUN_ATTR)]
        assert len(failed) == 3  # the rerun ran none
    more = {**cfg, "budget": {"n_trials": 20, "max_failures": 4}}  # a higher limit goes on, to 5 > 4
    with pytest.raises(StudyAbortedError, match=r"too many failures: 5 > budget.max_failures=4"):
        optimize(None, more, client=client2, results_dir=tmp_path, progress=False)


def test_a_resumed_study_spends_timeout_s_over_its_runs_active_time(client2, tmp_path):
    """`timeout_s` is the sum of the runs' active time: the time between runs is not spent,
    and a study whose time is up runs nothing more on a rerun."""
    from studyflow import optimize

    def run(n_trials: int):
        cfg = {"objective": "sf_objectives:sleepy", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
               "sampler": {"name": "random", "seed": 1}, "budget": {"n_trials": n_trials, "timeout_s": 4}}
        started = time.monotonic()
        result = optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
        return result, time.monotonic() - started

    first, _ = run(6)  # well within its time
    assert first.stop_reason == "n_trials"
    time.sleep(4.5)  # longer than timeout_s between the runs: not counted
    second, wall = run(10_000)  # raising n_trials continues the journal
    assert second.stop_reason == "timeout_s"
    assert len(second.trials) > len(first.trials)  # it had time left to run trials
    assert wall < 4 + 10
    third, _ = run(10_000)
    assert third.stop_reason == "timeout_s"
    assert len(third.trials) == len(second.trials)  # its time was spent: nothing more ran


def test_a_seeded_grid_stopped_by_its_timeout_then_rerun_runs_every_point_once(client2, tmp_path):
    """A quant's seeded grid stops at its `timeout_s` with trials held ahead by the workers (not
    run, given back); rerun without the limit, it runs every point of the grid and no point
    twice: the journal's grid ids still name the same points (the grid's shuffle follows its
    seed, which a resume must not shift), and a point whose trial was only held is still to run."""
    from studyflow import optimize

    study = {"objective": "sf_objectives:sleepy", "sampler": {"name": "grid", "seed": 1}, "prefetch": 3,
             "search_space": {"x": {"type": "float", "low": 0, "high": 1, "step": 0.04}}}
    first = optimize(None, {**study, "budget": {"n_trials": 1_000, "timeout_s": 0.5}}, client=client2,
                     results_dir=tmp_path, progress=False)
    assert first.stop_reason == "timeout_s" and 0 < len(first.trials) < 26
    assert any(t.system_attrs.get("studyflow:not_run") for t in _journal_trials(tmp_path))  # held, not run
    second = optimize(None, {**study, "budget": {"n_trials": 1_000}}, client=client2, results_dir=tmp_path,
                      progress=False)
    trials = second.trials
    assert second.stop_reason in ("grid", "n_trials")
    assert sorted(trials["params_x"].round(2)) == [round(0.04 * i, 2) for i in range(26)]  # each point once
    assert (trials["state"] == "COMPLETE").all() and not trials["cached"].astype(bool).any()


def test_a_scrambled_qmc_study_resumed_continues_its_sequence(client2, tmp_path):
    """A scrambled QMC sequence is fixed by its seed, and Optuna keeps its position in the
    journal: 6 trials, then a rerun raised to 12, propose the 12 points one run of 12 does."""
    from studyflow import optimize

    study = {"objective": "sf_objectives:sleepy", "sampler": {"name": "qmc", "seed": 3, "options": {"scramble": True}},
             "search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "concurrency": 1}
    optimize(None, {**study, "budget": {"n_trials": 6}}, client=client2, results_dir=tmp_path / "resumed", progress=False)
    resumed = optimize(None, {**study, "budget": {"n_trials": 12}}, client=client2, results_dir=tmp_path / "resumed",
                       progress=False)
    whole = optimize(None, {**study, "budget": {"n_trials": 12}}, client=client2, results_dir=tmp_path / "whole",
                     progress=False)
    assert len(resumed.trials) == 12
    assert sorted(resumed.trials["params_x"]) == sorted(whole.trials["params_x"])


FAQ_SCRIPT = '''\
import sys

import numpy as np

import studyflow


class Objective:  # Optuna's FAQ way to hand data to an objective: a callable class
    def __init__(self, X):
        self.X = X

    def __call__(self, trial):
        with open("evaluated.txt", "a") as f:
            f.write("x\\n")
        return float(((self.X - trial.suggest_float("x", -1, 1)) ** 2).sum())


study = {"name": "faq", "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": int(sys.argv[1])}}
result = studyflow.optimize(Objective(np.arange(3.0)), study, n_workers=2, progress=False)
print(result.journal.name)
'''


def test_a_scripts_callable_class_objective_rerun_with_a_raised_budget_runs_only_the_new_trials(tmp_path):
    """The key of an objective built in a script holds its pickle; cloudpickle names a class
    of `__main__` by an id drawn anew in each process, which made every run a new study."""
    (tmp_path / "tune.py").write_text(FAQ_SCRIPT)
    journals = []
    for n_trials in (4, 6):
        proc = subprocess.run([sys.executable, "tune.py", str(n_trials)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        journals.append(proc.stdout.strip())
    assert journals[0] == journals[1]
    assert len((tmp_path / "evaluated.txt").read_text().split()) == 6
