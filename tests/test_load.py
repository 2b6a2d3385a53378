"""Under load: many trial loops on few workers, instant trials, nothing lost or duplicated.

The full-size run (64 loops x 10,000 trials) is `benchmarks/load.py`; this is its small twin.
"""

from __future__ import annotations

from distributed import Client
from distributed import LocalCluster

from studyflow import optimize


def test_32_loops_on_4_workers_run_exactly_the_budget_with_no_trial_lost_or_left_running(tmp_path):
    with LocalCluster(n_workers=4, threads_per_worker=8, host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        study = {"objective": "sf_objectives:instant", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
                 "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 3000}, "concurrency": 32}
        result = optimize(None, study, client=client, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert trials["number"].tolist() == list(range(3000))  # none lost, none duplicated
    assert (trials["state"] == "COMPLETE").all()
    assert trials["worker"].nunique() == 4
    states = {t.state.name for t in result.study.get_trials(deepcopy=False)}
    assert "RUNNING" not in states
