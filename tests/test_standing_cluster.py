"""A cluster several studies share: `studyflow cluster up`, studies that attach by its scheduler
file, `studyflow cluster down`.

The user's story: start a cluster once, run two studies against it from two shells, both make
progress from the start and run on its workers; only the cluster's owner gets in; `down` ends
it and leaves nothing behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pandas as pd
import pytest
from distributed import Client

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def _studyflow(*args: str, cwd, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studyflow.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def standing(tmp_path):
    """A standing 4-worker cluster started with the CLI; brought down after the test."""
    up = _studyflow("cluster", "up", "cluster.json", "--workers", "4", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    yield tmp_path / "cluster.json"
    if (tmp_path / "cluster.json").exists():
        _studyflow("cluster", "down", "cluster.json", cwd=tmp_path)


def test_two_studies_run_from_two_shells_share_a_standing_cluster_and_down_ends_it(standing, write_study, tmp_path):
    cluster = {"mode": "scheduler_file", "scheduler_file": str(standing)}
    studies = {name: write_study(name, objective="sf_objectives:sleepy", search_space=SPACE,
                                 budget={"n_trials": 40}, cluster=cluster)
               for name in ("first", "second")}
    runs = [subprocess.Popen([sys.executable, "-m", "studyflow.cli", "run", str(path), "--results", "results"],
                             cwd=tmp_path, stderr=subprocess.PIPE, text=True)
            for path in studies.values()]
    for run in runs:
        _, err = run.communicate(timeout=180)
        assert run.returncode == 0, err

    status = json.loads(_studyflow("cluster", "status", "cluster.json", cwd=tmp_path).stdout)
    trials = {name: pd.read_parquet(tmp_path / "results" / "studies" / name / "trials.parquet") for name in studies}
    for table in trials.values():
        assert (table["state"] == "COMPLETE").sum() == 40
    # both ran side by side on the standing cluster's four workers, neither waiting for the other
    assert trials["first"]["datetime_start"].min() < trials["second"]["datetime_complete"].max()
    assert trials["second"]["datetime_start"].min() < trials["first"]["datetime_complete"].max()
    used = set(trials["first"]["worker"]) | set(trials["second"]["worker"])
    assert len(used) == 4 and all(w.startswith("tls://127.0.0.1:") for w in used)
    assert len(status["workers"]) == 4

    down = _studyflow("cluster", "down", "cluster.json", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not standing.exists() and not (tmp_path / "cluster.json.tls").exists()
    host, port = status["address"].removeprefix("tls://").rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):  # the scheduler is gone
        socket.create_connection((host, int(port)), timeout=3)


def test_a_process_without_the_clusters_credentials_is_refused(standing):
    address = json.loads(standing.read_text())["address"]
    assert oct(standing.with_name("cluster.json.tls").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(OSError):  # plain TCP to a TLS scheduler: no handshake, no handlers
        Client(address.replace("tls://", "tcp://"), timeout=3)
    from distributed.security import Security

    stranger = Security.temporary()  # TLS, but certificates the cluster's CA did not sign
    with pytest.raises(OSError):
        Client(address, security=stranger, timeout=3)


def test_a_standing_cluster_from_a_study_file_carries_its_worker_resources(write_study, tmp_path):
    study = write_study("pool", objective="sf_objectives:sleepy", search_space=SPACE,
                        worker_resources={"pool_x64": 1})
    up = _studyflow("cluster", "up", "pool.json", "--from", str(study), "--workers", "2", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        status = json.loads(_studyflow("cluster", "status", "pool.json", cwd=tmp_path).stdout)
        assert list(status["workers"].values()) == [{"pool_x64": 1}, {"pool_x64": 1}]
    finally:
        assert _studyflow("cluster", "down", "pool.json", cwd=tmp_path).returncode == 0


def test_up_where_a_cluster_is_already_up_fails_in_one_line(standing, tmp_path):
    again = _studyflow("cluster", "up", "cluster.json", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "studyflow: error: cluster.json exists: a cluster is up there (`studyflow cluster down cluster.json`), "
        "or a dead one left it; remove it to start anew"]


def test_an_objective_and_dataframe_given_as_values_reach_a_standing_clusters_workers(standing, tmp_path):
    """The scheduler runs in the cluster's own process: the callable and the DataFrame travel to
    it through its comm, once, and each worker fetches them from there."""
    from sf_objectives import with_data

    from studyflow import optimize

    study = {"name": "given", "search_space": {"w": {"type": "float", "low": 0, "high": 1}}, "budget": {"n_trials": 12},
             "cluster": {"mode": "scheduler_file", "scheduler_file": str(standing)}}
    data = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0]})
    trials = optimize(with_data, study, data=data, results_dir=tmp_path / "results", progress=False).trials
    assert (trials["state"] == "COMPLETE").sum() == 12
    assert (trials["user_attrs_rows"] == 4).all()
    assert ((trials["value"] - 10.0 * trials["params_w"]).abs() < 1e-12).all()


def test_cluster_status_names_the_studies_open_on_it_while_they_run(standing, write_study, tmp_path):
    from studyflow.driver._standing import status

    study = write_study("listed", objective="sf_objectives:sleepy", search_space=SPACE, budget={"n_trials": 120},
                        cluster={"mode": "scheduler_file", "scheduler_file": str(standing)})
    run = subprocess.Popen([sys.executable, "-m", "studyflow.cli", "run", str(study), "--results", "results"],
                           cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    while run.poll() is None:
        seen.update(status(standing)["studies"])
    _, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert seen == {"listed"}
    assert status(standing)["studies"] == []  # closed once it ended


def test_a_study_whose_standing_cluster_goes_down_mid_run_fails_in_one_line(standing, write_study, tmp_path):
    import time

    from studyflow.driver._standing import status

    study = write_study("orphan", objective="sf_objectives:sleepy", search_space=SPACE, budget={"n_trials": 400},
                        cluster={"mode": "scheduler_file", "scheduler_file": str(standing)})
    run = subprocess.Popen([sys.executable, "-m", "studyflow.cli", "run", str(study), "--results", "results"],
                           cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    while run.poll() is None and not status(standing)["studies"]:
        time.sleep(0.2)
    time.sleep(1.0)
    assert _studyflow("cluster", "down", "cluster.json", cwd=tmp_path).returncode == 0
    _, err = run.communicate(timeout=180)
    assert run.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("studyflow: error: study orphan: lost the cluster's scheduler mid-study"), err[-3000:]
    assert "rerun to resume" in last  # (above it, Dask's client logs its failed reconnects)
