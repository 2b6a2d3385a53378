"""The engine on a real 4-worker LocalCluster: exact budgets, define-by-run, the journal."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from studyflow import optimize
from studyflow.errors import DataError

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def test_1000_instant_trials_on_4_workers_none_lost_or_duplicated(client4, tmp_path):
    study = {"objective": "sf_objectives:instant", "search_space": SPACE,
             "sampler": {"name": "random", "seed": 1}, "budget": {"n_trials": 1000}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert trials["number"].tolist() == list(range(1000))
    assert (trials["state"] == "COMPLETE").all()
    assert trials["params_x"].between(0, 1).all()
    # instant trials travel in batches of up to 65 at ~3,000/s, so a loop that starts late may
    # find a small budget spent: 1,000 trials outlast the loops' start
    assert trials["worker"].nunique() >= 2
    assert result.stop_reason == "n_trials"


def test_plain_optuna_objective_runs_unchanged_define_by_run(client4, tmp_path):
    study = {"objective": "sf_objectives:quadratic", "sampler": {"name": "tpe", "seed": 3},
             "budget": {"n_trials": 30}, "concurrency": 3}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert len(trials) == 30 and (trials["state"] == "COMPLETE").all()
    assert trials["params_x"].between(-10, 10).all()
    assert set(trials["params_n"]) <= set(range(1, 6))
    assert set(trials["params_kind"]) <= {"a", "b"}
    expected = (trials["params_x"] - 2) ** 2 + trials["params_n"] + (trials["params_kind"] == "b") * 0.5
    assert (trials["value"] - expected).abs().max() < 1e-12
    assert isinstance(result.study.best_trial, optuna.trial.FrozenTrial)


def test_exactly_n_trials_complete_whatever_the_concurrency(client4, tmp_path):
    for concurrency, n_trials in ((1, 7), (4, 13), (8, 13)):
        study = {"objective": "sf_objectives:instant", "search_space": SPACE,
                 "budget": {"n_trials": n_trials}, "concurrency": concurrency}
        result = optimize(None, study, client=client4, results_dir=tmp_path / str(concurrency), progress=False)
        assert (result.trials["state"] == "COMPLETE").sum() == n_trials
        assert len(result.trials) == n_trials


def test_journal_opens_with_optuna_and_holds_the_same_trials(client4, tmp_path):
    study = {"objective": "sf_objectives:quadratic", "budget": {"n_trials": 20}, "name": "journaled"}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    assert result.journal.is_file() and result.journal.parent == tmp_path / ".store" / "journals"
    loaded = optuna.load_study(study_name="journaled", storage=JournalStorage(JournalFileBackend(str(result.journal))))
    ours = result.trials.set_index("number")
    theirs = loaded.get_trials()
    assert [t.number for t in theirs] == list(range(20))
    for t in theirs:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.value == ours.loc[t.number, "value"]
        assert t.params == {k: ours.loc[t.number, f"params_{k}"] for k in t.params}


def test_data_given_as_arrays_reaches_the_objective_and_keys_its_trials(client4, tmp_path):
    # data=(X, y), as an ML script holds it: any picklable value, hashed into the trial keys
    import numpy as np

    study = {"objective": "sf_objectives:fit_arrays", "search_space": {"w": {"type": "float", "low": -1, "high": 1}},
             "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 6}}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 2))  # bigger than a pickle frame (64 KiB): its buffer is written apart

    def run(y):
        return optimize(None, study, data=(X, y), client=client4, results_dir=tmp_path, progress=False).trials

    half, double, again = run(X[:, 0] * 0.5), run(X[:, 0] * 2.0), run(X[:, 0] * 2.0)
    assert (half["user_attrs_rows"] == 5000).all() and not half["cached"].any()
    expected = [float(((X[:, 0] * w - X[:, 0] * 0.5) ** 2).mean()) for w in half["params_w"]]
    assert half["value"].tolist() == pytest.approx(expected)
    assert half["value"].tolist() != double["value"].tolist()  # other data: its own journal and keys
    assert again["value"].tolist() == double["value"].tolist()  # the same data: its journal, resumed


def test_an_objective_that_starts_processes_of_its_own_runs(client4, tmp_path):
    # a worker process is not daemonic, as a script's main process is not: else "daemonic
    # processes are not allowed to have children" failed every trial
    study = {"objective": "sf_objectives:pooled", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": 4}}
    trials = optimize(None, study, client=client4, results_dir=tmp_path, progress=False).trials
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 4, trials["error"].tolist()
    assert (trials["value"] == trials["params_x"]).all()


def test_objective_gets_data_and_objective_args(client4, tmp_path):
    data = pd.DataFrame({"y": [1.0, 2.0, 3.0]})
    study = {"objective": "sf_objectives:with_data", "objective_args": {"column": "y", "scale": 2.0},
             "search_space": {"w": {"type": "float", "low": 0, "high": 1}}, "budget": {"n_trials": 8}}
    result = optimize(None, study, data=data, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert (trials["user_attrs_rows"] == 3).all()
    assert ((trials["value"] - 12.0 * trials["params_w"]).abs() < 1e-12).all()


def test_data_given_as_a_folder_of_parquet_files_reaches_the_objective_as_one_table(client4, tmp_path):
    """A partitioned dataset (Spark's `year=` folders), as `pd.read_parquet` reads it; before,
    `optimize(data=folder)` said "data file not found"."""
    for year, ys in ((2023, [1.0, 2.0]), (2024, [3.0])):
        (tmp_path / "prices" / f"year={year}").mkdir(parents=True)
        pd.DataFrame({"y": ys}).to_parquet(tmp_path / "prices" / f"year={year}" / "part-0.parquet")
    (tmp_path / "prices" / "_SUCCESS").write_text("")
    study = {"objective": "sf_objectives:with_data", "search_space": {"w": {"type": "float", "low": 0, "high": 1}},
             "budget": {"n_trials": 4}, "data_columns": ["y", "year"]}
    trials = optimize(None, study, data=tmp_path / "prices", client=client4, results_dir=tmp_path / "r",
                      progress=False).trials
    assert (trials["user_attrs_rows"] == 3).all()
    assert ((trials["value"] - 6.0 * trials["params_w"]).abs() < 1e-12).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: a folder without data files"):
        optimize(None, study, data=tmp_path / "empty", client=client4, results_dir=tmp_path / "r", progress=False)


def test_a_callable_reaches_a_users_cluster_whose_scheduler_runs_in_another_process(tmp_path):
    """`client=` a cluster of the user's: its `scheduler` attribute may stand for a process of
    its own (here distributed's SubprocessCluster), where the study server cannot take what
    this process handed over ("held_token names nothing handed over in this process")."""
    from distributed import Client
    from distributed.deploy.subprocess import SubprocessCluster

    def objective(trial):
        return trial.suggest_float("x", 0, 1) * 2

    with SubprocessCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        trials = optimize(objective, {"name": "elsewhere", "budget": {"n_trials": 6}}, client=client,
                          results_dir=tmp_path, progress=False).trials
    assert (trials["state"] == "COMPLETE").sum() == 6


def test_a_python_callable_objective(client4, tmp_path):
    def objective(trial):
        return trial.suggest_int("k", 0, 3) * 2

    study = {"objective": "unused:unused", "budget": {"n_trials": 10}, "name": "callable"}
    result = optimize(objective, study, client=client4, results_dir=tmp_path, progress=False)
    assert ((result.trials["value"] == result.trials["params_k"] * 2)).all()
    assert result.best()["best_values"] == [result.trials["value"].min()]


def test_an_objective_carrying_a_large_array_is_sent_to_the_workers_once_whatever_their_number(client4, tmp_path):
    """A notebook's objective closing over its training data (here a callable carrying 20 MB)
    went with each trial loop's task: pickled and sent once per loop (4 here, 8 on 8 workers,
    and again for each loop restarted), under Dask's "Sending large graph" warning about a
    graph the user never built. 200 MB on 4 workers took 5.0 s and 1.1 GB in the driver.
    Sent once as a Dask dependency instead, it tied every loop to the worker holding it."""
    from sf_objectives import Carrying

    objective = Carrying(np.zeros(2_500_000))
    study = {"name": "carrying", "search_space": SPACE, "budget": {"n_trials": 40}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = optimize(objective, study, client=client4, results_dir=tmp_path, progress=False)
    assert (result.trials["state"] == "COMPLETE").sum() == 40
    assert result.trials["worker"].nunique() == 4  # every worker got it, and ran trials
    assert Carrying.pickled == 2, Carrying.pickled  # once for the trial keys, once to the workers
    assert not [w for w in caught if "large graph" in str(w.message)], [str(w.message) for w in caught]


def test_workers_run_one_blas_openmp_thread_even_when_snakemake_exports_more(monkeypatch):
    import os

    from studyflow.driver import connect

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "8")  # what `snakemake -c8` exports to the optimize job
    def pools() -> list[tuple[str, int]]:
        """The thread pools a trial's numpy/scikit-learn code would use (OpenBLAS, OpenMP)."""
        import sklearn.ensemble  # noqa: F401  loads OpenMP
        from threadpoolctl import threadpool_info

        return [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]

    with connect(2) as client:
        env = client.run(lambda: {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")})
        threads = client.run(pools)
    for worker_pools in threads.values():
        assert worker_pools and all(n == 1 for _, n in worker_pools), worker_pools
    worker_env = next(iter(env.values()))
    assert worker_env["OMP_NUM_THREADS"] == "1"
    assert worker_env["OPENBLAS_NUM_THREADS"] == "1"
    assert worker_env["GOTO_NUM_THREADS"] == "1"
    assert worker_env["MKL_NUM_THREADS"] == "1"


def _profiled(dask_worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


def test_local_workers_skip_dask_stack_profiling_unless_the_environment_asks_for_it(monkeypatch):
    from studyflow.driver import PROFILE_ENV_VAR
    from studyflow.driver import connect

    monkeypatch.delenv(PROFILE_ENV_VAR, raising=False)
    with connect(1) as client:
        assert list(client.run(_profiled).values()) == [False]
    for asked in (True, False):
        monkeypatch.setenv(PROFILE_ENV_VAR, str(asked))
        with connect(1) as client:
            assert list(client.run(_profiled).values()) == [asked]


def test_grid_sampler_visits_every_combination_once_and_stops(client4, tmp_path):
    study = {"objective": "sf_objectives:quadratic", "sampler": {"name": "grid", "seed": 0},
             "search_space": {"x": {"type": "float", "low": 0, "high": 1, "step": 0.5},
                              "n": {"type": "int", "low": 1, "high": 2},
                              "kind": {"type": "categorical", "choices": ["a", "b"]}},
             "budget": {"n_trials": 100}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    combos = result.trials[["params_x", "params_n", "params_kind"]].apply(tuple, axis=1)
    assert len(combos) == 12 and combos.is_unique  # 3 x 2 x 2, n_trials capped at the grid
    assert result.best()["stop_reason"] == "grid"  # not "n_trials": 100 were asked for, 12 ran


@pytest.mark.parametrize("n_trials", [None, 100])
def test_a_grid_with_enqueued_trials_runs_every_point_as_optunas_grid_does(client4, tmp_path, n_trials):
    """A quant enqueues known-good settings (one on the grid, one off it) into a grid search
    with no limit (or one above grid + enqueued): Optuna's grid sampler gives the enqueued
    trials no grid point, runs every point of the grid besides them and stops. The enqueued
    trials count toward n_trials, so they must not use up the grid's points."""
    study = {"objective": "sf_objectives:quadratic", "sampler": {"name": "grid", "seed": 0},
             "search_space": {"x": {"type": "float", "low": 0, "high": 1, "step": 0.5},
                              "n": {"type": "int", "low": 1, "high": 2},
                              "kind": {"type": "categorical", "choices": ["a", "b"]}},
             "enqueue": [{"x": 0.5, "n": 1, "kind": "a"}, {"x": 0.25, "n": 2, "kind": "b"}],
             "budget": {"n_trials": n_trials}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    combos = list(result.trials[["params_x", "params_n", "params_kind"]].itertuples(index=False, name=None))
    grid = {(x, n, k) for x in (0.0, 0.5, 1.0) for n in (1, 2) for k in ("a", "b")}
    assert combos[:2] == [(0.5, 1, "a"), (0.25, 2, "b")]  # the enqueued ones first
    assert set(combos[2:]) == grid and len(combos) == 14  # then each of the 12 points once
    assert result.best()["stop_reason"] == "grid"


@pytest.mark.parametrize("scheduling", ["async", "reproducible"])
def test_a_grid_of_hundreds_of_points_some_failing_runs_each_point_once_on_four_workers(client4, tmp_path, scheduling):
    """A quant's grid of cheap backtests, some of which raise, on 4 workers: every point is
    run once, on every worker, and the study ends there, as Optuna's grid sampler ends it (a
    failed point is not run again, nor a passing one revisited to make up the failures), and a
    rerun of the same study runs nothing more."""
    study = {"objective": "sf_objectives:raises_when_large", "sampler": {"name": "grid", "seed": 1},
             "search_space": {"x": {"type": "float", "low": 0, "high": 1, "step": 0.004}},
             "budget": {"n_trials": 10_000, "max_failures": 1_000}, "scheduling": scheduling}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    points = [round(0.004 * i, 3) for i in range(251)]  # 0, 0.004, ..., 1, as the study file's grid has them
    assert len(trials) == 251 and sorted(trials["params_x"].round(3)) == points
    assert not trials["cached"].astype(bool).any()
    assert set(trials.loc[trials["state"] == "COMPLETE", "params_x"]) == {x for x in trials["params_x"] if x <= 0.7}
    assert (trials["state"] == "FAIL").sum() == sum(x > 0.7 for x in trials["params_x"]) > 0
    assert result.stop_reason == "grid" and trials["worker"].nunique() == 4
    again = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    assert again.stop_reason == "grid" and len(again.trials) == 251  # a rerun runs nothing more


def test_two_objectives_give_values_columns_and_a_pareto_front(client4, tmp_path):
    study = {"objective": "sf_objectives:two_objectives", "directions": ["minimize", "minimize"],
             "sampler": {"name": "nsga2", "seed": 0}, "budget": {"n_trials": 16}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    assert {"values_0", "values_1"} <= set(trials.columns) and "value" not in trials.columns
    assert ((trials["values_1"] - (1 - trials["params_x"]) ** 2).abs() < 1e-12).all()
    front = result.best()["pareto_front"]
    assert len(front) == 16  # on this curve every trial is Pareto-optimal


def test_pruning_sees_intermediate_values_from_other_workers(client4, tmp_path):
    study = {"objective": "sf_objectives:learning_curve", "sampler": {"name": "random", "seed": 4},
             "pruner": {"name": "median", "options": {"n_startup_trials": 4, "n_warmup_steps": 2}},
             "budget": {"n_trials": 40}}
    result = optimize(None, study, client=client4, results_dir=tmp_path, progress=False)
    trials = result.trials
    pruned = trials[trials["state"] == "PRUNED"]
    assert len(trials) == 40 and set(trials["state"]) == {"COMPLETE", "PRUNED"}
    assert len(pruned) > 0
    assert pruned["params_x"].min() > trials.loc[trials["state"] == "COMPLETE", "params_x"].min()
    assert pruned["worker"].nunique() >= 1 and trials["worker"].nunique() == 4


def test_a_study_started_before_any_worker_joined_waits_for_one(tmp_path):
    # A cluster still starting (or one whose workers restart after a hung trial) has no worker
    # for a moment: the study waits for one instead of failing for want of worker resources.
    from distributed import Client
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        joins = threading.Timer(1.0, cluster.scale, args=(1,))
        joins.start()
        study = {"objective": "sf_objectives:instant", "search_space": SPACE, "budget": {"n_trials": 20}}
        started = time.monotonic()
        result = optimize(None, study, client=client, results_dir=tmp_path, progress=False)
        joins.join()
        assert time.monotonic() - started >= 1.0  # it did wait for the worker
        assert (result.trials["state"] == "COMPLETE").sum() == 20
        assert result.trials["worker"].nunique() == 1
