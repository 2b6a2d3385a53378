"""On a real SLURM (started by .ci/slurm-local.sh): the workflow through the slurm profile, a
study whose Dask workers are SLURM jobs, a worker job cancelled mid-study, and TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime

import pandas as pd
import pytest
import yaml

from conftest import REPO
from conftest import TESTS
from studyflow import optimize
from studyflow.config import ClusterConfig
from studyflow.driver import connect


def _slurm_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM here: sinfo not found (.ci/run starts one with .ci/slurm-local.sh)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if proc.returncode != 0 or "idle" not in proc.stdout and "mix" not in proc.stdout:
        return f"no SLURM node up: sinfo said {proc.stdout.strip() or proc.stderr.strip()!r}"
    return None


REASON = _slurm_up()
if REASON:
    print(f"\nskipping the slurm tests: {REASON}", file=sys.stderr)
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
if REASON is None:
    # dask_jobqueue installs a signal handler when first imported, which fails off the main
    # thread; the tests below run studies in threads
    import dask_jobqueue  # noqa: F401
SLURM = {"mode": "slurm", "jobs": 2, "memory": "1GB", "walltime": "00:15:00"}


def sacct(*fields: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-S", "now-1hour", "-o", ",".join(fields)],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def _counted_study_in_a_thread(tmp_path, monkeypatch, n_trials: int, cluster: dict) -> tuple[threading.Thread, dict]:
    """A study of 0.2 s trials, each counted in count.txt, run by optimize() in a thread."""
    monkeypatch.setenv("SF_COUNT_FILE", str(tmp_path / "count.txt"))  # sbatch exports the env
    monkeypatch.setenv("SF_SLEEP", "0.2")
    study = {"objective": "sf_objectives:counted", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": n_trials}, "cluster": cluster}
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(
        result=optimize(None, study, results_dir=tmp_path / "results", progress=False)))
    runner.start()
    return runner, outcome


def _wait_for_trials(tmp_path, n: int, runner: threading.Thread, timeout_s: float = 300) -> None:
    deadline, count = time.monotonic() + timeout_s, tmp_path / "count.txt"
    while not (count.exists() and len(count.read_text().splitlines()) >= n):
        assert time.monotonic() < deadline and runner.is_alive(), "the study made no progress"
        time.sleep(0.2)


def _workflow_copy(tmp_path, study: dict) -> None:
    shutil.copy(REPO / "Snakefile", tmp_path)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "config/studies").mkdir(parents=True)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump({"studies": ["on_slurm"]}))
    (tmp_path / "config/studies/on_slurm.yaml").write_text(yaml.safe_dump(study))


def _snakemake_slurm(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
         "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )


def test_the_workflow_through_the_slurm_profile_runs_optimize_as_a_slurm_job(tmp_path):
    """A study that sets no concurrency, as the shipped ones: its optimize job books the
    profile's `cores` (here this one node's 2 CPUs) and runs that many workers. Without
    `cores`, `snakemake --profile profiles/slurm` failed at once on Snakemake's "Workflow
    requires a total number of cores to be defined"."""
    _workflow_copy(tmp_path, {"objective": "sf_objectives:instant", "budget": {"n_trials": 8},
                              "search_space": {"x": {"type": "float", "low": 0, "high": 1}}})
    profile = tmp_path / "profiles/slurm/config.yaml"
    assert "\ncores: 8" in profile.read_text()  # as shipped; this node has 2 CPUs
    profile.write_text(profile.read_text().replace("\ncores: 8", "\ncores: 2"))
    proc = _snakemake_slurm(tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    trials = pd.read_parquet(tmp_path / "results/studies/on_slurm/trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == 8
    assert (tmp_path / "results/reports/on_slurm.html").is_file()
    assert "local cluster: 2 workers" in (tmp_path / "logs/optimize/on_slurm.log").read_text()
    jobs = sacct("Comment", "State", "AllocCPUS")
    assert ["rule_optimize_wildcards_on_slurm", "COMPLETED", "2"] in jobs, jobs


def test_a_cluster_run_that_cannot_tell_an_optimize_jobs_cpus_says_how_to(tmp_path):
    """A profile without `cores`, for a study without `concurrency`: one line saying what
    to set, instead of Snakemake's words about fractions of the total cores."""
    _workflow_copy(tmp_path, {"objective": "sf_objectives:instant", "budget": {"n_trials": 2}})
    profile = tmp_path / "profiles/slurm/config.yaml"
    profile.write_text(profile.read_text().replace("\ncores: 8", "\n"))
    proc = _snakemake_slurm(tmp_path)
    assert proc.returncode != 0
    assert ("study on_slurm sets no concurrency, so its optimize job books --cores CPUs, which this run does "
            "not set") in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.parametrize("cluster, says, asked", [
    ({"queue": "nope"}, "invalid partition specified: nope", "-p nope"),
    ({"cores": 64}, "Requested node configuration is not available", "--cpus-per-task=64"),  # the node has 2
    ({"memory": "900GB"}, "Requested node configuration is not available", "--mem=839G"),
])
def test_a_worker_job_slurm_refuses_stops_the_study_in_one_line(tmp_path, cluster, says, asked):
    """A typo'd partition, more CPUs or memory than any node has: sbatch refuses the job.
    dask-jobqueue retried the submission for good, logging a traceback each time, and the
    study waited 600 s for a worker. The line quotes what the job asked for: sbatch's "node
    configuration is not available" is the same for cores and memory."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "objective": "sf_objectives:instant", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        "budget": {"n_trials": 2}, "cluster": {**SLURM, "jobs": 1, **cluster}}))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", "study.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - started < 60
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("studyflow: error: SLURM refuses this study's worker job") and says in last, last
    assert asked in last, last
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_slurm_study_that_went_right_closes_its_cluster_without_error_tracebacks(tmp_path):
    """Before, distributed logged each worker job's removal as the cluster closed, which the
    close cut short while studyflow's plugin awaited it, as ERROR tracebacks (CancelledError)
    at the end of a study that had gone right: on every run of this two-trial study."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "objective": "sf_objectives:instant", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        "budget": {"n_trials": 2}, "cluster": SLURM}))
    for run in range(2):
        proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", "study.yaml", "--results", f"r{run}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and " ERROR " not in proc.stderr, proc.stderr[-3000:]
        assert (pd.read_parquet(tmp_path / f"r{run}/studies/study/trials.parquet")["state"] == "COMPLETE").sum() == 2


def test_a_study_whose_dask_workers_are_slurm_jobs_over_tls(tmp_path):
    # its objective starts processes of its own (a worker job's workers are not daemonic)
    study = {"objective": "sf_objectives:pooled", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": 20}, "cluster": SLURM}
    result = optimize(None, study, results_dir=tmp_path / "results", progress=False)
    trials = result.trials
    assert (trials["state"] == "COMPLETE").sum() == 20
    assert trials["worker"].str.startswith("tls://").all()


def test_a_dataframe_given_to_an_adaptive_slurm_study_reaches_its_worker_jobs(tmp_path):
    """`optimize(..., data=df)` with `adapt:`: the jobs are asked for once the trial loops are
    submitted, but the DataFrame was scattered before them, and a scatter waits for a worker:
    every such study failed after 30 s, "TimeoutError: No valid workers found"."""
    study = {"objective": "sf_objectives:with_data", "search_space": {"w": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": 4}, "cluster": {**SLURM, "jobs": 1, "adapt": {"minimum": 0, "maximum": 1}}}
    data = pd.DataFrame({"y": [1.0, 2.0, 3.0]})
    trials = optimize(None, study, data=data, results_dir=tmp_path / "results", progress=False).trials
    assert (trials["state"] == "COMPLETE").sum() == 4
    assert (trials["user_attrs_rows"] == 3).all()


def test_a_trial_needing_more_than_its_share_of_a_worker_jobs_memory_runs(tmp_path, monkeypatch):
    """dask-jobqueue gives each of a job's `cores` workers memory / cores (here 1 GB / 2), and
    the nanny killed a worker past 95% of that: a 700 MB trial in a 1 GB job failed as
    "WorkerLost". Each worker may use the job's memory; SLURM holds the job to it."""
    monkeypatch.setenv("SF_ALLOC_BYTES", str(700 * 2**20))  # sbatch exports the environment
    study = {"objective": "sf_objectives:needs_memory", "budget": {"n_trials": 2, "retries": 0},
             "cluster": {**SLURM, "jobs": 1, "cores": 2}}
    trials = optimize(None, study, results_dir=tmp_path / "results", progress=False).trials
    assert trials.set_index("number").loc[0, "state"] == "COMPLETE", trials["error"].tolist()


def test_a_slurm_worker_jobs_trial_runs_with_trial_threads(tmp_path):
    study = {"objective": "sf_objectives:reports_threads", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": 1}, "cluster": {**SLURM, "jobs": 1, "cores": 1, "trial_threads": 2}}
    trial = optimize(None, study, results_dir=tmp_path / "results", progress=False).trials.iloc[0]
    assert trial["state"] == "COMPLETE", trial["error"]
    assert (trial["user_attrs_omp_env"], trial["user_attrs_blas"], trial["user_attrs_torch"]) == ("2", 2, 2)


def test_a_worker_job_cancelled_mid_study_is_replaced_and_the_study_completes(tmp_path, monkeypatch):
    runner, outcome = _counted_study_in_a_thread(tmp_path, monkeypatch, 40, SLURM)
    _wait_for_trials(tmp_path, 8, runner)
    running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-n", "dask-worker", "-o", "%i"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert running
    subprocess.run(["scancel", running[0]], check=True)
    runner.join(timeout=600)
    assert not runner.is_alive()
    trials = outcome["result"].trials
    assert (trials["state"] == "COMPLETE").sum() == 40
    assert "RUNNING" not in set(trials["state"])
    states = dict(sacct("JobID", "State"))
    assert states[running[0]].startswith("CANCELLED")


def test_a_plain_tcp_client_cannot_talk_to_the_tls_scheduler(tmp_path):
    from distributed import Client

    cfg = ClusterConfig(**{**SLURM, "jobs": 1})
    with connect(cluster=cfg, tls_dir=tmp_path / "tls") as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=5)


def _worker_jobs() -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-n", "dask-worker", "-o", "%i|%r"], capture_output=True, text=True,
                         check=True).stdout
    return [tuple(line.split("|", 1)) for line in out.splitlines()]


def test_a_worker_job_that_starts_late_runs_trials_too(tmp_path, monkeypatch):
    # both worker jobs are submitted held: the test lets the first start, the second seconds later
    cluster = {**SLURM, "cores": 1, "job_extra_directives": ["--hold"]}
    runner, outcome = _counted_study_in_a_thread(tmp_path, monkeypatch, 60, cluster)
    deadline = time.monotonic() + 120
    while len(jobs := _worker_jobs()) < 2:
        assert time.monotonic() < deadline and runner.is_alive(), f"worker jobs never queued: {jobs}"
        time.sleep(0.2)
    first, second = sorted(job for job, _ in jobs)
    subprocess.run(["scontrol", "release", first], check=True)
    _wait_for_trials(tmp_path, 10, runner)
    time.sleep(2)  # the study has run on one job for a while
    subprocess.run(["scontrol", "release", second], check=True)
    runner.join(timeout=600)
    assert not runner.is_alive()
    trials = outcome["result"].trials
    assert (trials["state"] == "COMPLETE").sum() == 60 and len(trials) == 60
    assert trials["worker"].nunique() == 2, trials["worker"].value_counts()


def test_worker_jobs_that_cannot_start_stop_the_study_quoting_slurm(tmp_path):
    from studyflow import StudyflowError

    cluster = {**SLURM, "jobs": 1, "job_extra_directives": ["--chdir=/nonexistent/studyflow-test"]}
    study = {"objective": "sf_objectives:instant", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": 5}, "cluster": cluster}
    started = time.monotonic()
    with pytest.raises(StudyflowError) as caught:
        optimize(None, study, results_dir=tmp_path / "results", progress=False)
    message = str(caught.value)
    assert "3 SLURM worker jobs in a row ended before their worker started" in message
    assert "state FAILED" in message and "\n" not in message
    assert time.monotonic() - started < 120


def _worker_job_ends(since: datetime) -> dict[str, str | None]:
    """{job id: end time, or None while it runs} of the worker jobs submitted since `since`."""
    return {job: None if end in ("Unknown", "None") else end
            for job, name, submit, end in sacct("JobID", "JobName", "Submit", "End")
            if name == "dask-worker" and datetime.fromisoformat(submit) >= since}


def test_an_adaptive_cluster_gives_back_worker_jobs_the_rest_of_the_budget_cannot_use(tmp_path, monkeypatch):
    started = datetime.now().replace(microsecond=0)
    monkeypatch.setenv("SF_SLOW_TRIAL", "79")  # the last trial runs 20 s on one job: a long tail
    monkeypatch.setenv("SF_SLOW_S", "20")
    study = {"objective": "sf_objectives:slow_last", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": 80}, "cluster": {**SLURM, "cores": 1, "adapt": {"minimum": 0, "maximum": 2}}}
    result = optimize(None, study, results_dir=tmp_path / "results", progress=False)
    trials = result.trials
    assert (trials["state"] == "COMPLETE").sum() == 80
    assert trials["worker"].nunique() == 2  # the cluster grew from no job to two
    deadline = time.monotonic() + 90
    while None in (ends := _worker_job_ends(started)).values() or len(ends) < 2:
        assert time.monotonic() < deadline, f"worker jobs still running: {ends}"
        time.sleep(1)
    first_end = min(datetime.fromisoformat(end) for end in ends.values())
    tail_start = trials.loc[trials["number"] == 79, "datetime_start"].iloc[0].to_pydatetime()
    study_end = trials["datetime_complete"].max().to_pydatetime()
    # the job the tail could not use ended within a minute of the tail's start, and seconds
    # before the study (sacct's times are whole seconds; the tail lasts 20 s)
    assert (first_end - tail_start).total_seconds() < 60, (tail_start, first_end)
    assert (study_end - first_end).total_seconds() > 5, (first_end, study_end)


def test_a_job_slurms_accounting_has_not_seen_end_yet_is_quoted_once_it_has(tmp_path, monkeypatch):
    """`squeue` drops an ended job before the accounting database (`sacct`) records its end:
    the study's one-line error quotes the job's final state, not the "PENDING" read too early.
    Here `sacct` is a script that answers as a lagging database does."""
    from studyflow.driver._slurm_jobs import slurm_says

    calls = tmp_path / "calls"
    sacct = tmp_path / "bin" / "sacct"
    sacct.parent.mkdir()
    sacct.write_text(f"#!/bin/sh\necho x >> {calls}\n"
                     f"[ $(wc -l < {calls}) -ge 3 ] && echo 'FAILED|None|1:0' || echo 'PENDING|None|0:0'\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{sacct.parent}:{os.environ['PATH']}")
    assert slurm_says("88") == "state FAILED, reason None, exit code 1:0"
    assert len(calls.read_text().splitlines()) == 3
    calls.write_text("")
    started = time.monotonic()
    assert slurm_says("88", wait_s=0.0) == "state PENDING, reason None, exit code 0:0"  # it gives up
    assert time.monotonic() - started < 5


def test_a_standing_slurm_cluster_runs_a_study_and_down_leaves_nothing_behind(tmp_path):
    """`studyflow cluster up --from` a SLURM study, a study attached by its scheduler file,
    then `down`: its worker jobs are gone from the queue, and so is every file it wrote
    beside the scheduler file (an empty `.<file>.certs/` folder stayed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump({"objective": "sf_objectives:instant",
                                                        "cluster": {**SLURM, "jobs": 1}}))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "objective": "sf_objectives:instant", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        "budget": {"n_trials": 3}, "cluster": {"mode": "scheduler_file", "scheduler_file": "c.json"}}))
    cli = [sys.executable, "-m", "studyflow.cli"]
    up = subprocess.run([*cli, "cluster", "up", "c.json", "--from", "pool.yaml"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        run = subprocess.run([*cli, "run", "study.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert (pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")["state"] == "COMPLETE").sum() == 3
    finally:
        down = subprocess.run([*cli, "cluster", "down", "c.json"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    assert down.returncode == 0, down.stderr[-3000:]
    deadline = time.monotonic() + 30
    while any(p.name.startswith((".c.json", "c.json")) and p.name != "c.json.log" for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
        time.sleep(0.5)


def test_a_study_running_fewer_trials_at_once_than_its_jobs_hold_books_only_the_jobs_it_uses(tmp_path):
    """`concurrency: 1` (the matrix example's methods) with `jobs: 2` of one worker: one trial
    loop ran, on one job, and the other job sat booked and idle for the whole study."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "objective": "sf_objectives:sleepy", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        "budget": {"n_trials": 30}, "concurrency": 1, "cluster": {**SLURM, "cores": 1}}))  # 3 s of trials
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", "study.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")["state"] == "COMPLETE").sum() == 30
    jobs = sorted(p.name for p in (tmp_path / "logs/slurm-workers").glob("dask-worker-*.err"))
    assert len(jobs) == 1, jobs
    assert "1 job(s) of 1 worker(s)" in proc.stderr, proc.stderr[-3000:]
