"""Loops follow workers: every worker that joins a running study runs trials too.

A study starts as soon as one worker is up; workers that join later (SLURM jobs that leave the
queue late, a nanny's replacement, `cluster.scale`) get trial loops of their own, up to the
study's concurrency, and a loop that is cancelled (e.g. by `Client.restart`) is replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from distributed import Client
from distributed import LocalCluster

from studyflow import optimize

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def _cluster(n_workers: int) -> LocalCluster:
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0")


def _side_by_side(client: Client, studies: dict[str, dict], tmp_path, delays: dict[str, float] | None = None) -> dict:
    """Run the studies at once on one client, each from its own thread (after its delay in s);
    their results by name."""
    results: dict = {}

    def run(name: str) -> None:
        time.sleep((delays or {}).get(name, 0.0))
        study = {"objective": "sf_objectives:sleepy", "search_space": SPACE, "name": name, **studies[name]}
        results[name] = optimize(None, study, client=client, results_dir=tmp_path / name, progress=False)

    runners = [threading.Thread(target=run, args=(name,)) for name in studies]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(timeout=120)
    return results


def test_two_workers_that_join_mid_study_run_trials_too(tmp_path):
    with _cluster(1) as cluster, Client(cluster) as client:
        joins = threading.Timer(1.0, cluster.scale, args=(3,))
        joins.start()
        study = {"objective": "sf_objectives:sleepy", "search_space": SPACE, "budget": {"n_trials": 80}}
        result = optimize(None, study, client=client, results_dir=tmp_path, progress=False)
        joins.join()
        trials = result.trials
        assert (trials["state"] == "COMPLETE").sum() == 80 and len(trials) == 80
        assert trials["worker"].nunique() == 3, trials["worker"].value_counts()


def test_a_study_whose_loops_are_cancelled_by_a_restart_replaces_them_and_finishes(tmp_path):
    with _cluster(2) as cluster, Client(cluster) as client:
        restart = threading.Timer(1.5, client.restart)
        restart.start()
        study = {"objective": "sf_objectives:sleepy", "search_space": SPACE, "budget": {"n_trials": 40}}
        result = optimize(None, study, client=client, results_dir=tmp_path, progress=False)
        restart.join()
        complete = result.trials[result.trials["state"] == "COMPLETE"]
        assert len(complete) == 40
        assert result.stop_reason == "n_trials"


def test_one_worker_per_gpu_each_trial_sees_exactly_one_and_both_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # a box whose GPUs 0 and 1 are ours (none here: ids are pinned)
    study = {"objective": "sf_objectives:sees_gpus", "search_space": SPACE, "budget": {"n_trials": 30},
             "worker_resources": {"GPU": 1}, "cluster": {"mode": "local", "gpus": [0, 1]}}
    result = optimize(None, study, results_dir=tmp_path, progress=False)
    seen = result.trials["user_attrs_cuda_visible_devices"]
    assert (result.trials["state"] == "COMPLETE").sum() == 30
    assert set(seen) == {"0", "1"}  # every trial saw exactly one id, and both GPUs ran trials
    assert result.trials.groupby("worker")["user_attrs_cuda_visible_devices"].nunique().eq(1).all()


def test_each_worker_process_of_a_gpu_slurm_job_sees_only_its_own_gpu(tmp_path):
    # the job's dask-worker command and environment as the SLURM job script has them: SLURM
    # hands the job --gres=gpu:2 as CUDA_VISIBLE_DEVICES=3,5 (no GPU here: the ids are what is pinned)
    from studyflow.config import load_study
    from studyflow.driver._cluster import slurm_cluster_kwargs

    cfg = load_study({"objective": "m:f", "cluster": {"mode": "slurm", "cores": 2}})
    job = slurm_cluster_kwargs(cfg.cluster, None, {"GPU": 1})
    exports = dict(line.removeprefix("export ").split("=", 1) for line in job["job_script_prologue"]
                   if line.startswith("export ") and "$" not in line)
    env = {**os.environ, **exports, "CUDA_VISIBLE_DEVICES": "3,5", "PYTHONPATH": str(Path(__file__).parent)}
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=":0") as cluster, Client(cluster) as client:
        job_process = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--name", "job-7",
             "--nthreads", "1", "--nworkers", str(job["processes"]), "--nanny", *job["worker_extra_args"]],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=60)
            study = {"objective": "sf_objectives:sees_gpus", "search_space": SPACE, "budget": {"n_trials": 20},
                     "worker_resources": {"GPU": 1}}
            trials = optimize(None, study, client=client, results_dir=tmp_path, progress=False).trials
        finally:
            job_process.terminate()
            job_process.wait(30)
    assert (trials["state"] == "COMPLETE").sum() == 20
    assert set(trials["user_attrs_cuda_visible_devices"]) == {"3", "5"}  # one each, and both ran trials
    assert trials.groupby("worker")["user_attrs_cuda_visible_devices"].nunique().eq(1).all()


@pytest.mark.parametrize("gpus_per_worker, expected", [
    ("2", ["0,1", "2,3", "4,5"]),  # two GPUs each
    ("0.5", ["0", "0", "1"]),  # two workers share a GPU
])
def test_workers_of_a_gpu_job_split_its_gpus_by_their_index(gpus_per_worker, expected):
    from studyflow.worker._gpu_pin import pinned_gpus

    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5", "STUDYFLOW_GPUS_PER_WORKER": gpus_per_worker,
           "STUDYFLOW_WORKERS_PER_JOB": "3"}
    assert [pinned_gpus(f"SLURMCluster-4-{i}", env) for i in range(3)] == expected
    assert pinned_gpus("SLURMCluster-4", {**env, "STUDYFLOW_WORKERS_PER_JOB": "1"}) == expected[0]
    assert pinned_gpus("SLURMCluster-4-0", {"STUDYFLOW_GPUS_PER_WORKER": "1"}) is None  # a job without GPUs


@pytest.mark.parametrize("cluster", [{"gpus": [0, 1]}, {}])
def test_a_run_on_one_worker_per_gpu_logs_as_little_as_a_local_run(tmp_path, cluster):
    # the workers' own INFO lines (start, registered, connections, shutdown) are Dask's, not the user's
    study = {"objective": "sf_objectives:sees_gpus", "search_space": SPACE, "budget": {"n_trials": 4},
             "worker_resources": {"GPU": 1} if cluster else {}, "cluster": {"mode": "local", **cluster}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "CUDA_VISIBLE_DEVICES": "0,1"}
    run = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", "study.yaml", "--workers", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "wrote " in run.stderr
    assert [line for line in run.stderr.splitlines() if " - distributed." in line] == []


def test_gpus_auto_inside_a_slurm_job_given_no_gpu_fails_instead_of_taking_the_nodes(monkeypatch):
    from studyflow.driver._gpus import gpu_ids
    from studyflow.errors import StudyflowError

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(StudyflowError, match="cluster.gpus: auto found no GPU given to SLURM job 4242"):
        gpu_ids("auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # what SLURM sets for --gpus=2
    assert gpu_ids("auto") == ["2", "3"]


def test_gpus_naming_a_gpu_this_process_cannot_use_fail_instead_of_running_trials_on_the_cpu(tmp_path, monkeypatch):
    """A typo'd id (or another user's GPU, outside this process's CUDA_VISIBLE_DEVICES) would
    give its worker no GPU: a framework then quietly runs the trials on the CPU."""
    from studyflow.driver._gpus import gpu_ids
    from studyflow.errors import StudyflowError

    # this machine has no GPU: an nvidia-smi that lists two, as on a 2-GPU box
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-aa)'\n"
                                         "echo 'GPU 1: NVIDIA H100 (UUID: GPU-bb)'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_ids([0, 1]) == ["0", "1"] and gpu_ids("auto") == ["0", "1"]
    assert gpu_ids(["GPU-bb"]) == ["GPU-bb"]  # a UUID, as CUDA_VISIBLE_DEVICES takes it
    with pytest.raises(StudyflowError, match=r"cluster.gpus: GPU 2 is not one nvidia-smi lists \(0, 1\)"):
        gpu_ids([0, 2])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # this process may use GPU 1 only
    assert gpu_ids([1]) == ["1"]
    with pytest.raises(StudyflowError, match="cluster.gpus: GPU 0 is not among this process's CUDA_VISIBLE_DEVICES=1"):
        gpu_ids([0, 1])


def test_gpus_that_nothing_here_can_check_are_used_with_a_warning(tmp_path, monkeypatch, caplog):
    """`gpus: [0]` on a machine where neither CUDA_VISIBLE_DEVICES nor nvidia-smi says what it
    has (a container without nvidia-smi, or no GPU at all): the ids are used as given, but the
    run said nothing, and on a CPU box every trial quietly ran on the CPU."""
    from studyflow.driver._gpus import gpu_ids

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level("WARNING", logger="studyflow.driver._gpus"):
        assert gpu_ids([0]) == ["0"]
    assert any("cluster.gpus" in r.message and "nvidia-smi" in r.message and "CPU" in r.message
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("hidden", ["-1", "", "NoDevFiles"])
def test_gpus_auto_where_cuda_visible_devices_hides_every_gpu_fails_instead_of_pinning_a_worker_to_none(
        tmp_path, monkeypatch, hidden):
    """`CUDA_VISIBLE_DEVICES=-1` (or empty: how a user or a SLURM job without GPUs hides
    them) leaves CUDA no device. `auto` used to start one worker pinned to "-1", or, for an
    empty value, to take every GPU nvidia-smi lists; either way trials ran where the user
    had said no GPU."""
    from studyflow.driver._gpus import gpu_ids
    from studyflow.errors import StudyflowError

    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-aa)'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    with pytest.raises(StudyflowError, match=f"cluster.gpus: auto found no GPU: CUDA_VISIBLE_DEVICES={hidden} hides"):
        gpu_ids("auto")
    with pytest.raises(StudyflowError, match=f"cluster.gpus: GPU 0 is not among this process's CUDA_VISIBLE_DEVICES={hidden}"):
        gpu_ids([0])
    # CUDA stops at the first id that is not a device: "1,-1,0" gives GPU 1 only
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,0")
    assert gpu_ids("auto") == ["1"]


def test_gpus_outside_local_mode_or_of_the_wrong_shape_fail_naming_the_key():
    import pytest

    from studyflow import ConfigError
    from studyflow import load_study

    for cluster in ({"mode": "slurm", "gpus": [0]}, {"mode": "local", "gpus": []}, {"mode": "local", "gpus": "all"}):
        with pytest.raises(ConfigError) as caught:
            load_study({"objective": "m:f", "cluster": cluster})
        assert caught.value.key == "cluster.gpus"


def test_two_studies_started_together_on_one_cluster_both_make_progress_from_the_start(tmp_path):
    with _cluster(4) as cluster, Client(cluster) as client:
        budget = {"budget": {"n_trials": 40}}
        results = _side_by_side(client, {"first": budget, "second": budget}, tmp_path)
    starts = {name: r.trials["datetime_start"].min() for name, r in results.items()}
    ends = {name: r.trials["datetime_complete"].max() for name, r in results.items()}
    assert all((r.trials["state"] == "COMPLETE").sum() == 40 for r in results.values())
    # each study's first trial began before the other study was over: they ran side by side
    assert starts["first"] < ends["second"] and starts["second"] < ends["first"]
    later = max(starts.values())
    # and neither waited for the other to use the whole cluster: both started within a couple of s
    assert (later - min(starts.values())).total_seconds() < 2.0


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_study_opened_beside_a_running_one_gets_its_share_while_the_first_runs(tmp_path, sampler):
    """The first study holds both slots; a second opens 1 s later and gets one of them as the
    first's running trial ends. A random search's loops always hold a trial ahead (prefetch), and
    a loop over its study's share stopped only once it held none: the second study waited for
    the whole of the first."""
    with _cluster(2) as cluster, Client(cluster) as client:
        studies = {"first": {"budget": {"n_trials": 80}, "sampler": {"name": sampler, "seed": 1}},
                   "second": {"budget": {"n_trials": 6}, "sampler": {"name": sampler, "seed": 2}}}
        results = _side_by_side(client, studies, tmp_path, delays={"second": 1.0})
    first, second = results["first"].trials, results["second"].trials
    assert (first["state"] == "COMPLETE").sum() == 80 and (second["state"] == "COMPLETE").sum() == 6
    # 80 trials of 0.1 s on 2 slots take 4 s alone: the second (0.6 s on one slot) is done well before
    left = (first["datetime_complete"].max() - second["datetime_complete"].max()).total_seconds()
    assert left > 1.0, (left, first["datetime_complete"].max(), second["datetime_start"].min())


def test_a_slurm_studys_worker_resources_become_gres_and_worker_resources_in_the_job_script():
    from studyflow.config import load_study
    from studyflow.driver._cluster import slurm_job_script

    cfg = load_study({"objective": "m:f", "worker_resources": {"GPU": 1, "pool_x64": 1},
                      "cluster": {"mode": "slurm", "cores": 2}})
    script = slurm_job_script(cfg.cluster, resources=cfg.worker_resources)
    assert "#SBATCH --gres=gpu:2" in script  # two worker processes of one GPU each
    assert "--resources GPU=1,pool_x64=1" in script
    plain = slurm_job_script(cfg.cluster)
    assert "--gres" not in plain and "--resources" not in plain


def test_two_studies_routed_to_two_labelled_pools_each_run_only_on_their_pool(tmp_path):
    import subprocess
    import sys

    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=":0") as cluster, Client(cluster) as client:
        pools = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                   "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                   "--resources", f"{pool}=1", "--name", pool])
                 for pool in ("pool_x64", "pool_x32")]
        try:
            client.wait_for_workers(2, timeout=60)
            addresses = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
            results = _side_by_side(client, {pool: {"budget": {"n_trials": 12}, "worker_resources": {pool: 1}}
                                             for pool in ("pool_x64", "pool_x32")}, tmp_path)
        finally:
            for proc in pools:
                proc.terminate()
                proc.wait(timeout=30)
    for pool, result in results.items():
        assert (result.trials["state"] == "COMPLETE").sum() == 12
        assert set(result.trials["worker"]) == {addresses[pool]}


def test_a_users_client_runs_a_study_file_written_for_an_adaptive_slurm_cluster_on_its_own_workers(tmp_path):
    """`client=` is where the trials run: a study file's `cluster: {mode: slurm, adapt: ...}`
    (for the SLURM runs) does not make the study plan for the SLURM cluster's 8 slots on the
    user's 2 workers (8 loop tasks, 6 of them queued on the user's cluster)."""
    with _cluster(2) as cluster, Client(cluster) as client:
        loops = []

        def count(done, total):
            loops.append(client.run_on_scheduler(
                lambda dask_scheduler: sum(str(k).startswith("studyflow-loop") for k in dask_scheduler.tasks)))

        study = {"objective": "sf_objectives:sleepy", "search_space": SPACE, "budget": {"n_trials": 12},
                 "cluster": {"mode": "slurm", "adapt": {"minimum": 0, "maximum": 4}, "cores": 2}}
        result = optimize(None, study, client=client, results_dir=tmp_path, progress=False, progress_callback=count)
    assert (result.trials["state"] == "COMPLETE").sum() == 12
    assert result.trials["worker"].nunique() == 2
    assert result.best()["workers"] == 2 and max(loops) == 2, (result.best()["workers"], loops)
