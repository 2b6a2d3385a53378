"""Nothing lost: objectives that raise, return garbage or hang, and workers killed mid-trial.

Each runs on its own real LocalCluster (processes), so killed and restarted workers never
touch another test.
"""

from __future__ import annotations

import json
import time

import optuna
import pandas as pd
import psutil
import pytest

import sf_objectives
from studyflow import StudyAbortedError
from studyflow import optimize
from studyflow.driver import connect

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def study(objective: str, n_trials: int = 20, **extra) -> dict:
    budget = {"n_trials": n_trials, "max_failures": 100, **extra.pop("budget", {})}
    return {"objective": f"sf_objectives:{objective}", "search_space": SPACE,
            "sampler": {"name": "random", "seed": 5}, "budget": budget, **extra}


@pytest.fixture(scope="module")
def client2():
    with connect(2) as client:
        yield client


def assert_finished_cleanly(trials, n_trials: int) -> None:
    assert (trials["state"] == "COMPLETE").sum() == n_trials
    assert "RUNNING" not in set(trials["state"])
    assert trials["number"].is_unique


def test_objective_raising_on_some_params_fails_those_trials_and_goes_on(client2, tmp_path):
    result = optimize(None, study("raises_when_large"), client=client2, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert_finished_cleanly(trials, 20)
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) > 0
    assert (failed["params_x"] > 0.7).all()
    assert failed["error"].str.startswith("ValueError: x too large").all()
    assert trials.loc[trials["state"] == "COMPLETE", "error"].isna().all()


def test_an_objective_calling_sys_exit_fails_its_trial_once_and_its_worker_goes_on(client2, tmp_path):
    result = optimize(None, study("exits_when_large"), client=client2, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert_finished_cleanly(trials, 20)
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) > 0 and (failed["params_x"] > 0.7).all()
    assert failed["error"].str.startswith("SystemExit: 3").all()  # the objective's failure, not a lost worker
    assert (trials["attempt"] == 0).all()  # so not retried


def test_objective_returning_nan_is_a_failed_trial_saying_what_it_returned(client2, tmp_path):
    result = optimize(None, study("nan_when_large"), client=client2, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert_finished_cleanly(trials, 20)
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) > 0 and (failed["params_x"] > 0.7).all()
    assert failed["error"].str.contains("objective returned nan, NaN is not a value").all()


def test_what_an_objective_returns_completes_or_fails_its_trial_as_in_plain_optuna(client2, tmp_path):
    # +-inf (a penalty), a 0-d array or tensor, a Decimal: Optuna takes any value float() takes but NaN
    kinds = list(sf_objectives.RETURNS)
    cfg = {"objective": "sf_objectives:returns", "sampler": {"name": "grid"},
           "search_space": {"kind": {"type": "categorical", "choices": kinds}},
           "budget": {"n_trials": len(kinds), "max_failures": 100}}
    trials = optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False).trials
    optuna.logging.set_verbosity(optuna.logging.CRITICAL)
    plain = optuna.create_study()
    for kind in kinds:
        plain.enqueue_trial({"kind": kind})
    plain.optimize(sf_objectives.returns, n_trials=len(kinds), catch=(Exception,))
    expected = {t.params["kind"]: (t.state.name, t.value) for t in plain.trials}
    got = {row.params_kind: (row.state, None if row.state == "FAIL" else row.value) for row in trials.itertuples()}
    assert got == expected
    assert {"inf", "-inf", "numpy-0d", "decimal"} <= {k for k, (state, _) in got.items() if state == "COMPLETE"}
    assert trials.loc[trials["state"] == "FAIL", "error"].str.startswith("InvalidResult: objective returned").all()


def test_too_many_failures_stops_the_study_with_a_clear_error(client2, tmp_path):
    cfg = study("always_raises", n_trials=50)
    cfg["budget"]["max_failures"] = None  # the default rule: the first 10 all failed
    with pytest.raises(StudyAbortedError, match="the first 10 trials all failed") as caught:
        optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
    assert "budget.max_failures" in str(caught.value)  # the setting that lets it go on


def test_patience_stops_after_n_trials_without_improvement(client2, tmp_path):
    cfg = study("constant", n_trials=100, budget={"patience": 5}, concurrency=1)
    result = optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
    assert result.stop_reason == "patience"
    assert len(result.trials) == 6 and (result.trials["state"] == "COMPLETE").all()


@pytest.mark.parametrize("objective, extra, states", [
    ("pruned_after_first", {"pruner": {"name": "median"}}, {"COMPLETE", "PRUNED"}),  # a pruned trial is finished
    ("dominated_after_first", {"directions": ["minimize", "minimize"]}, {"COMPLETE"}),  # none joins the front
])
def test_patience_counts_every_finished_trial_that_improves_nothing(client2, tmp_path, objective, extra, states):
    cfg = study(objective, n_trials=100, budget={"patience": 5}, concurrency=1, **extra)
    result = optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
    assert result.stop_reason == "patience"
    assert len(result.trials) == 6 and set(result.trials["state"]) == states


def test_n_trials_null_runs_until_timeout_s_as_optimize_with_a_timeout_only(client2, tmp_path):
    # optuna's study.optimize(objective, timeout=1.5): no cap on the trials, the time is the budget
    cfg = study("instant", n_trials=None, budget={"timeout_s": 1.5})
    progress = []
    result = optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False,
                      progress_callback=lambda done, total: progress.append((done, total)))
    assert result.stop_reason == "timeout_s"
    assert (result.trials["state"] == "COMPLETE").sum() > 100  # far past the default n_trials (20)
    assert progress[-1] == (len(result.trials), None)  # no total to count up to
    assert result.best()["n_trials"] is None


def test_n_trials_null_with_patience_stops_by_patience(client2, tmp_path):
    cfg = study("constant", n_trials=None, budget={"patience": 7}, concurrency=1)
    result = optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
    assert result.stop_reason == "patience" and len(result.trials) == 8


def test_timeout_s_starts_no_new_trial_after_it(client2, tmp_path):
    cfg = study("sleepy", n_trials=10_000, budget={"timeout_s": 1.5})
    result = optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert result.stop_reason == "timeout_s"
    assert 2 <= len(trials) < 10_000
    assert set(trials["state"]) == {"COMPLETE"}


def test_hung_trial_times_out_its_worker_is_restarted_and_the_study_goes_on(tmp_path):
    cfg = study("hangs_when_large", n_trials=12, budget={"trial_timeout_s": 2})
    with connect(2) as client:
        result = optimize(None, cfg, client=client, results_dir=tmp_path, progress=False)
        client.wait_for_workers(2, timeout=30)  # the restarted workers come back
    trials = result.trials
    assert_finished_cleanly(trials, 12)
    timed_out = trials[trials["state"] == "FAIL"]
    assert len(timed_out) > 0 and (timed_out["params_x"] > 0.8).all()
    assert timed_out["error"].str.startswith("Timeout: trial ran longer than budget.trial_timeout_s=2 s").all()
    assert (timed_out["duration_s"] < 2 + 10).all()


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["program", "program ignoring SIGTERM"])
def test_a_hung_trials_program_ends_with_its_worker(tmp_path, monkeypatch, ignores_sigterm):
    """A trial that hangs in a program it started (a training script it shells out to): the
    timeout restarted the worker, and the program ran on, holding its GPU or cores, for good.
    One that ignores SIGTERM (busy saving a checkpoint) ran on too while the reaper waited
    0.5 s to SIGKILL it: the nanny kills a hung trial's worker, reaper and all, after 0.4 s."""
    monkeypatch.setenv("SF_CHILD_PIDS", str(tmp_path / "children.txt"))
    monkeypatch.setenv("SF_CHILD_S", "0.2")  # trial 1's runs 600 s
    if ignores_sigterm:
        monkeypatch.setenv("SF_CHILD_IGNORES_TERM", "1")
    cfg = study("runs_a_child", n_trials=6, budget={"trial_timeout_s": 2, "retries": 0})
    with connect(2) as client:  # a fresh cluster: its workers see the variables
        result = optimize(None, cfg, client=client, results_dir=tmp_path, progress=False)
        timed_out = result.trials[result.trials["state"] == "FAIL"]
        assert list(timed_out["number"]) == [1] and timed_out["error"].str.startswith("Timeout").all()
        time.sleep(1.5)
        pids = [int(pid) for pid in (tmp_path / "children.txt").read_text().split()]
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    for pid in left:
        psutil.Process(pid).kill()
    assert not left, "the hung trial's program ran on after its worker was restarted"


def test_worker_killed_mid_trial_is_retried_with_the_same_params(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SF_KILL_MARKER", str(tmp_path / "killed"))
    cfg = study("kills_worker_once", n_trials=12)
    with connect(2) as client, caplog.at_level("INFO", logger="studyflow"):  # workers see the marker path
        result = optimize(None, cfg, client=client, results_dir=tmp_path, progress=False)
    # the log counts it lost, not failed by the objective (as the summary tables do)
    assert any('"failed": 0, "lost": 1' in r.getMessage() for r in caplog.records), caplog.text[-2000:]
    trials = result.trials.set_index("number")
    assert (tmp_path / "killed").exists()
    assert_finished_cleanly(result.trials, 12)
    lost = trials.loc[3]
    assert lost["state"] == "FAIL" and lost["error"].startswith("WorkerLost")
    assert pd.isna(lost["duration_s"])  # no worker measured it (it was lease-to-loss time)
    retry = trials[trials["retry_of"] == 3]
    assert len(retry) == 1
    assert retry.iloc[0]["state"] == "COMPLETE"
    assert retry.iloc[0]["params_x"] == lost["params_x"]
    assert retry.iloc[0]["attempt"] == 1


def test_a_worker_crashing_as_a_trial_begins_fails_that_trial_and_keeps_those_it_finished(tmp_path, monkeypatch):
    """A backtest whose C extension kills its process at once on some parameters, with trials
    shorter than a round trip. The worker's last outcomes had not reached the server, which
    pinned the crash on the trial it last heard was running: 15 FAIL rows for 8 crashes, most
    of them trials that had returned, while the crashing trials were handed out again as never
    begun and the finished ones ran again."""
    runs_log = tmp_path / "runs.log"
    monkeypatch.setenv("SF_RUNS_LOG", str(runs_log))
    cfg = study("crashes_above_09", n_trials=30, budget={"retries": 1})
    with connect(2) as client:  # workers spawn after the env is set
        trials = optimize(None, cfg, client=client, results_dir=tmp_path, progress=False).trials
    runs = runs_log.read_text().split("\n")
    began = [int(line.split()[1]) for line in runs if line.startswith("began")]
    returned = {int(line.split()[1]) for line in runs if line.startswith("returned")}
    crashed = set(began) - returned
    assert len(began) == len(set(began)), "a trial ran twice"
    states = trials.set_index("number")["state"]
    assert set(states[states == "FAIL"].index) == crashed
    assert set(states[states == "COMPLETE"].index) == returned
    assert (states == "COMPLETE").sum() == 30
    failed = trials[trials["state"] == "FAIL"]
    assert (failed["params_x"] > 0.9).all() and failed["error"].str.startswith("WorkerLost").all()
    first_tries = failed[failed["attempt"] == 0]
    assert len(first_tries) >= 2  # the seed gives several crashing draws: each is retried once
    assert sorted(failed.loc[failed["attempt"] == 1, "retry_of"]) == sorted(first_tries["number"])


def test_loops_that_cannot_write_their_trails_run_their_trials_as_before(client2, tmp_path):
    """A SLURM job whose results folder is not shared, a full disk: no trail, the study runs."""
    (tmp_path / ".store").mkdir()
    (tmp_path / ".store" / "trails").write_text("not a folder")
    result = optimize(None, study("instant", n_trials=40), client=client2, results_dir=tmp_path, progress=False)
    assert_finished_cleanly(result.trials, 40)


def test_the_summary_tables_count_lost_trials_apart_from_the_objectives_failures(tmp_path, monkeypatch):
    """A trial lost with its worker is retried: summary/studies.parquet and matrix.parquet
    counted it as a failure of the objective and as one more trial (n_trials 13 for a study
    of 12), and their wall time was the last run's alone."""
    from studyflow.outputs import summarize
    from studyflow.outputs._matrix import matrix_table

    monkeypatch.setenv("SF_KILL_MARKER", str(tmp_path / "killed"))
    with connect(2) as client:
        result = optimize(None, study("kills_worker_once", n_trials=12), client=client, results_dir=tmp_path,
                          progress=False)
    result.write(tmp_path / "studies" / result.config.name)
    study_dir = tmp_path / "studies" / result.config.name
    best = json.loads((study_dir / "best.json").read_text())
    studies, _, _ = summarize([study_dir])
    matrix = matrix_table([study_dir], {result.config.name: ("problem", "method")})
    for table in (studies, matrix):
        row = table.iloc[0]
        assert (row["n_trials"], row["complete"], row["failed"], row["lost"]) == (12, 12, 0, 1)
        assert row["active_time_s"] == best["active_time_s"]


def test_a_trial_needing_more_than_a_workers_share_of_memory_runs_as_under_plain_optuna(tmp_path, monkeypatch):
    """Dask gives each local worker memory / workers (3 GB of 24 GB with 8 workers; a GPU
    worker, memory / cores) and its nanny kills the worker at 95% of that: a 4 GB trial on
    a machine with 22 GB free failed as "WorkerLost", saying nothing of memory. A worker may
    use the machine's memory, as a process under plain Optuna does."""
    from distributed.system import MEMORY_LIMIT

    need = int(MEMORY_LIMIT / 8 * 1.3)
    if psutil.virtual_memory().available < 2 * need:
        pytest.skip(f"needs {2 * need / 1e9:.1f} GB free to hold {need / 1e9:.1f} GB in one trial")
    monkeypatch.setenv("SF_ALLOC_BYTES", str(need))
    study = {"objective": "sf_objectives:needs_memory", "budget": {"n_trials": 2, "retries": 0}}
    trials = optimize(None, study, n_workers=8, results_dir=tmp_path, progress=False).trials
    assert trials.set_index("number").loc[0, "state"] == "COMPLETE", trials["error"].tolist()


def test_a_worker_its_nanny_stops_for_memory_fails_its_trial_saying_so(tmp_path):
    """A cluster of the user's whose workers have a memory limit (a SLURM job's share, a
    `LocalCluster(memory_limit=...)`): a trial past 95% of it failed as "WorkerLost: worker ...
    left mid-trial", with nothing about memory, so the user could not tell a leak from a crash."""
    from distributed import Client
    from distributed import LocalCluster

    study = {"objective": "sf_objectives:needs_memory", "budget": {"n_trials": 2, "retries": 0}}
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="400MiB", dashboard_address=":0",
                      env={"SF_ALLOC_BYTES": str(600 * 2**20)}) as cluster, Client(cluster) as client:
        trials = optimize(None, study, client=client, results_dir=tmp_path, progress=False).trials
    error = trials.set_index("number").loc[0, "error"]
    assert error.startswith("WorkerLost") and "95% of its memory limit" in error, error


def test_a_define_by_run_trial_whose_worker_died_is_retried_with_the_params_it_ran(tmp_path, monkeypatch):
    """Random search, define-by-run: the server draws the trial's parameters at the ask and the
    worker's suggests answer from them, so the server's trial had none yet when the worker
    died; its retry drew new ones (README: re-run "with the same parameters")."""
    monkeypatch.setenv("SF_KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("SF_KILL_AT", "8")  # past the first finished trials: x is drawn at the ask
    cfg = study("kills_worker_once", n_trials=12)
    cfg.pop("search_space")
    with connect(2) as client:
        trials = optimize(None, cfg, client=client, results_dir=tmp_path, progress=False).trials
    retry = trials[trials["retry_of"] == 8]
    assert len(retry) == 1 and retry.iloc[0]["state"] == "COMPLETE"
    assert retry.iloc[0]["params_x"] == float((tmp_path / "killed").read_text())
    # the lost trial's row shows the values it ran with too, as Optuna's trial keeps them
    assert trials.set_index("number").loc[8, "params_x"] == retry.iloc[0]["params_x"]


def test_cli_run_writes_failed_trials_tracebacks_to_the_study_log(write_study, tmp_path):
    import subprocess
    import sys

    import pandas as pd

    path = write_study(**study("raises_when_large", n_trials=10))
    proc = subprocess.run(
        [sys.executable, "-m", "studyflow.cli", "run", str(path), "--workers", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == 10
    log = (tmp_path / "logs/optimize/study.log").read_text()
    n_failed = int((trials["state"] == "FAIL").sum())
    assert n_failed > 0
    assert log.count("Traceback (most recent call last)") == n_failed
    assert "in raises_when_large" in log and "ValueError: x too large" in log


def test_a_result_that_cannot_be_recorded_fails_the_trial_not_the_loop(client2, tmp_path):
    result = optimize(None, study("unserializable_attr", n_trials=10), client=client2, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert_finished_cleanly(trials, 10)
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) > 0 and (failed["params_x"] > 0.5).all()
    assert failed["error"].str.startswith("RecordError").all()
    assert failed["error"].str.contains("'thing'").any() and failed["error"].str.contains("'when'").any()
    assert (trials["user_attrs_x"] == trials["params_x"]).all()  # the attrs it could record, kept


def test_system_attrs_an_objective_sets_through_trial_storage_reach_its_trial_or_fail_it(client2, tmp_path):
    """As on Optuna's journal storage: what JSON holds reaches the journal before the tell;
    a value it cannot hold, or a name of studyflow's own, fails that trial, naming it (what
    could be recorded is kept, as for user attrs). A trial answered from the store later gets
    none of them (a run id belongs to the run)."""
    ran = optimize(None, study("storage_system_attrs", n_trials=4), client=client2, results_dir=tmp_path,
                   progress=False)
    assert_finished_cleanly(ran.trials, 4)
    for trial in ran.study.trials:  # read back from the journal; a failed trial keeps what could be kept
        assert trial.state.name == ("COMPLETE" if trial.number % 3 == 0 else "FAIL")
        assert trial.system_attrs["run_id"] == f"run-{trial.number}"
        assert trial.system_attrs["curve"] == [trial.params["x"], 2 * trial.params["x"]]
        assert "tags" not in trial.system_attrs and trial.system_attrs["studyflow:key"] != "mine"
    failed = ran.trials.set_index("number")["error"]
    assert failed[1].startswith("RecordError: system attr 'tags'")
    assert failed[2].startswith("ValueError: studyflow: system attribute 'studyflow:key' is studyflow's own")
    again = optimize(None, study("storage_system_attrs", n_trials=1, name="again"), client=client2,
                     results_dir=tmp_path, progress=False)
    assert again.trials["cached"].all()
    assert "run_id" not in again.study.trials[0].system_attrs


def test_an_int_beyond_64_bits_in_a_user_attr_is_kept_exactly(client2, tmp_path):
    # JSON (Optuna's journal) holds it; Dask's msgpack cannot, and the trial loops died on it
    result = optimize(None, study("big_int_attr", n_trials=6), client=client2, results_dir=tmp_path, progress=False)
    assert_finished_cleanly(result.trials, 6)
    assert [t.user_attrs["digest"] for t in result.study.trials] == [2**70 + t.number for t in result.study.trials]
    assert result.trials["user_attrs_digest"].tolist() == [str(2**70 + n) for n in result.trials["number"]]
    assert result.trials["user_attrs_small"].dtype == "int64"


def test_numpy_values_in_user_attrs_are_kept_as_the_numbers_and_lists_json_holds(client2, tmp_path):
    # what sklearn, XGBoost, NumPy or PyTorch hand an objective: plain Optuna keeps them in memory
    result = optimize(None, study("numpy_attrs", n_trials=4), client=client2, results_dir=tmp_path, progress=False)
    assert set(result.trials["state"]) == {"COMPLETE"}
    for trial in result.study.trials:  # read back from the journal
        assert trial.user_attrs == {"best_iteration": 7, "score": 0.5, "curve": [0.25, 0.5],
                                    "nested": {"sizes": [1, 2]}, "loss": 0.25}
    assert result.trials["user_attrs_best_iteration"].tolist() == [7] * 4


# --- Step 13: one key, one runner; failures counted where they belong ---


def test_followers_of_a_failed_trial_run_its_key_one_at_a_time(client4, tmp_path):
    """Trials sampled with the key of a running trial wait for it; when it fails they run the
    key themselves, one after another: two workers never run the same key at once."""

    def fails_first_run(trial, log):
        import time
        from pathlib import Path

        start = time.time()
        marker = Path(log).with_name(f"{trial.key}.ran")
        first = not marker.exists()
        marker.touch()
        time.sleep(1.0 if first else 0.3)  # the first run lasts while the other loops ask
        with open(log, "a") as f:
            f.write(f"{trial.key} {start} {time.time()}\n")
        if first:
            raise RuntimeError("the first run of a key fails")
        return 1.0

    log = tmp_path / "runs.txt"
    cfg = {"objective": "unused:unused", "objective_args": {"log": str(log)},
           "search_space": {"c": {"type": "categorical", "choices": ["only"]}},  # one key
           "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 6, "max_failures": 100}}
    result = optimize(fails_first_run, cfg, client=client4, results_dir=tmp_path / "results", progress=False)
    runs = sorted((float(s), float(e)) for _, s, e in (line.split() for line in log.read_text().splitlines()))
    assert len(runs) == 2, runs  # the failed run, then one follower; the others share its result
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start >= end - 0.05, f"the same key ran twice at once: {runs}"
    trials = result.trials
    assert (trials["state"] == "COMPLETE").sum() == 6 and (trials["state"] == "FAIL").sum() == 1


def test_a_sampler_that_raises_fails_the_study_with_its_error_not_the_loops(client2, tmp_path, caplog):
    """TPE with no candidates raises once its startup trials are done: the study stops with
    the sampler's error after `retries + 1` attempts (its traceback in the log), instead of
    its loops dying and their trials being retried as lost workers."""
    import logging

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    cfg = study("instant", n_trials=40, budget={"retries": 1})
    cfg["sampler"] = {"name": "tpe", "seed": 1, "options": {"n_startup_trials": 3, "n_ei_candidates": 0}}
    with caplog.at_level(logging.ERROR, logger="studyflow"):
        with pytest.raises(StudyAbortedError, match=r"sampler \(tpe, CachedFitTPESampler\) raised 2 times in a "
                                                    r"row: ValueError: The size of `samples` must be positive"):
            optimize(None, cfg, client=client2, results_dir=tmp_path, progress=False)
    failures = [r for r in caplog.records if "the sampler raised" in r.getMessage()]
    assert len(failures) == 2  # retries + 1 attempts
    assert all(r.exc_text and "Traceback" in r.exc_text and "_tpe" in r.exc_text for r in failures)
    journal = next((tmp_path / ".store/journals").glob("study-*.log"))
    trials = optuna.load_study(study_name="study", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    assert "RUNNING" not in {t.state.name for t in trials}  # the failed asks left nothing running
    assert not [t for t in trials if str(t.system_attrs.get("studyflow:error", "")).startswith("WorkerLost")]
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 3  # its startup trials (more in flight)


def _break_the_service_task(dask_scheduler):
    """Make every open study's service task die with an error at its next batch."""

    async def broken(batch):
        raise RuntimeError("injected: the service task broke")

    for served in dask_scheduler.plugins["studyflow"]._studies.values():
        served.service._serve_batch = broken
        served.wakeup.set()


def test_a_dead_service_task_fails_the_study_instead_of_hanging(tmp_path):
    import threading

    outcome: dict = {}
    with connect(2) as client:
        def on_progress(done, total):
            if done >= 3 and "broken" not in outcome:
                outcome["broken"] = client.run_on_scheduler(_break_the_service_task)

        def run():
            try:
                optimize(None, study("sleepy", n_trials=300), client=client, results_dir=tmp_path, progress=False,
                         progress_callback=on_progress)
            except Exception as exc:  # noqa: BLE001 - the test looks at it below
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(120)
        assert not thread.is_alive(), "the study hung after its service task died"
    assert "broken" in outcome
    assert isinstance(outcome.get("error"), StudyAbortedError), outcome
    assert "service task died" in str(outcome["error"]) and "injected" in str(outcome["error"])
