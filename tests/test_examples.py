"""The studies our users came with, each on a tiny budget through the real workflow."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """The workflow with its shipped config and studies, in a temp dir."""
    dest = tmp_path_factory.mktemp("examples")
    shutil.copy(REPO / "Snakefile", dest)
    for folder in ("workflow", "profiles", "config"):
        shutil.copytree(REPO / folder, dest / folder)
    return dest


def snakemake(workdir: Path, *config: str, targets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-c2", *targets, "--config", *config]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)


def trials_of(workdir: Path, study: str) -> pd.DataFrame:
    return pd.read_parquet(workdir / f"results/studies/{study}/trials.parquet")


def test_trading_grid_evaluates_all_100_combinations_once_even_across_reruns(repo_copy):
    start = time.perf_counter()
    proc = snakemake(repo_copy, "studies=[trading_grid]")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\n100 grid backtests through snakemake -c2: {elapsed:.1f} s (staging and report included)")
    trials = trials_of(repo_copy, "trading_grid")
    combos = trials[["params_fast", "params_slow", "params_stop"]].apply(tuple, axis=1)
    assert len(trials) == 100 and combos.is_unique and (trials["state"] == "COMPLETE").all()
    assert {"user_attrs_oos_sharpe", "user_attrs_oos_max_drawdown"} <= set(trials.columns)
    shutil.rmtree(repo_copy / "results/studies/trading_grid")
    shutil.rmtree(repo_copy / "results/.store/journals")  # only the trial store is left
    # Snakemake does not remake a deleted intermediate while the reports are up to date: ask.
    proc = snakemake(repo_copy, "studies=[trading_grid]", targets=("results/studies/trading_grid/trials.parquet",))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = trials_of(repo_copy, "trading_grid")
    assert again["cached"].all()  # not one backtest ran again
    pd.testing.assert_series_equal(again["value"], trials["value"])


def test_trading_tpe_and_pareto_front_on_a_tiny_budget(repo_copy):
    proc = snakemake(repo_copy, "studies=[trading_tpe,trading_pareto]",
                     'overrides={"trading_tpe": ["budget.n_trials=12"], "trading_pareto": ["budget.n_trials=16"]}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (trials_of(repo_copy, "trading_tpe")["state"] == "COMPLETE").sum() == 12
    pareto = trials_of(repo_copy, "trading_pareto")
    assert (pareto["state"] == "COMPLETE").sum() == 16 and {"values_sharpe", "values_max_drawdown"} <= set(pareto.columns)
    card = (repo_copy / "results/reports/trading_pareto.html").read_text()
    rows = json.loads(re.search(r'<script type="application/json" id="trial-rows">(.*?)</script>', card, re.S).group(1))
    assert 'id="pareto"' in card and any(rows["pareto"])  # the table marks the Pareto-optimal trials
    assert '"title":{"text":"sharpe"}' in card and '"title":{"text":"max_drawdown"}' in card  # the front's axes


def test_pruning_across_workers_marks_pruned_trials(repo_copy):
    proc = snakemake(repo_copy, "studies=[digits_pruning]", 'overrides={"digits_pruning": ["budget.n_trials=24"]}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(repo_copy, "digits_pruning")
    assert len(trials) == 24 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert (trials["state"] == "PRUNED").sum() > 0
    assert trials["worker"].nunique() == 2  # both workers ran trials; pruning saw both
    card = (repo_copy / "results/reports/digits_pruning.html").read_text()
    assert "PRUNED" in card


def test_porting_an_optuna_script_changes_at_most_5_lines_and_both_run():
    folder = REPO / "examples/port"
    before = (folder / "optuna_script.py").read_text().splitlines()
    after = (folder / "studyflow_script.py").read_text().splitlines()
    changed = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
               if line.startswith("+") and not line.startswith("+++")]
    changed = [line for line in changed if not line.startswith('+"""')]  # the docstring
    assert len(changed) <= 5, changed
    for script in ("optuna_script.py", "studyflow_script.py"):
        proc = subprocess.run([sys.executable, script], cwd=folder, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith("best value ")


SCRIPT_TOP = '''\
import os

import studyflow

with open("top_level_runs.txt", "a") as runs:  # where a script loads its data
    runs.write(f"{os.getpid()}\\n")


def objective(trial):
    return (trial.suggest_float("x", -10, 10) - 2) ** 2


'''
SCRIPT_CALL = '''\
result = studyflow.optimize(objective, {"name": "ported", "sampler": {"name": "tpe", "seed": 0},
                                        "budget": {"n_trials": 20}}, n_workers=2, progress=False)
print(int((result.trials["state"] == "COMPLETE").sum()), "COMPLETE")
'''


@pytest.mark.parametrize("guarded", [False, True], ids=["no main guard", "main guard"])
def test_a_script_calling_optimize_runs_its_top_level_once_with_or_without_a_main_guard(tmp_path, guarded):
    """Most Optuna scripts call `study.optimize` at their top level. Ported as they are, local
    workers must not run the script again (as spawned processes run their parent's `__main__`):
    without a guard that started a cluster in every worker and failed, and with one it
    loaded the script's data once more in every worker."""
    call = "if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in SCRIPT_CALL.splitlines())
    (tmp_path / "tune.py").write_text(SCRIPT_TOP + (call if guarded else SCRIPT_CALL))
    proc = subprocess.run([sys.executable, "tune.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "20 COMPLETE"
    assert len((tmp_path / "top_level_runs.txt").read_text().split()) == 1


SCRIPT_POOLS = '''\
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import studyflow


def square(v):  # a helper of the script's, sent to the pools' processes by reference
    return v * v


class Objective:
    def __call__(self, trial):
        x = trial.suggest_float("x", 0, 1)
        method = trial.suggest_categorical("method", ["fork", "spawn", "forkserver"])
        with multiprocessing.get_context(method).Pool(2) as pool:  # a backtest over symbols, say
            pooled = sum(pool.map(square, [x, x]))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as executor:
            return pooled + executor.submit(square, x).result()


if __name__ == "__main__":
    result = studyflow.optimize(Objective(), {"name": "pools", "sampler": {"name": "random", "seed": 0},
                                              "budget": {"n_trials": 9}}, n_workers=2, progress=False)
    print(sorted(set(result.trials["state"])), sorted(set(result.trials["params_method"])))
'''


def test_a_scripts_objective_hands_the_scripts_own_helpers_to_process_pools_as_under_plain_python(tmp_path):
    """`Pool.map(helper, ...)`, a ProcessPoolExecutor or a spawn DataLoader pickle the script's
    helpers by reference (`__main__.square`); plain Optuna runs in the script, where they are.
    The objective reached its worker by value, and every trial failed: "Can't pickle <function
    square>: attribute lookup square on __main__ failed"."""
    (tmp_path / "tune.py").write_text(SCRIPT_POOLS)
    proc = subprocess.run([sys.executable, "tune.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "['COMPLETE'] ['fork', 'forkserver', 'spawn']"


SCRIPT_POOLS_UNGUARDED = '''\
import multiprocessing
import operator

import studyflow


def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    method = trial.suggest_categorical("method", ["fork", "spawn", "forkserver"])
    with multiprocessing.get_context(method).Pool(1) as pool:
        return sum(pool.starmap(operator.mul, [(x, x)]))


result = studyflow.optimize(objective, {"name": "pools", "sampler": {"name": "random", "seed": 0},
                                        "budget": {"n_trials": 9}}, n_workers=2, progress=False)
print(sorted(set(result.trials["state"])), sorted(set(result.trials["params_method"])))
'''


def test_a_script_without_a_main_guard_still_runs_pools_of_an_installed_modules_functions(tmp_path):
    """Spawned children do not run such a script (they would run its whole study again, and
    fail to start one while bootstrapping): its objective may hand them an installed module's
    functions, as before."""
    (tmp_path / "tune.py").write_text(SCRIPT_POOLS_UNGUARDED)
    proc = subprocess.run([sys.executable, "tune.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "['COMPLETE'] ['fork', 'forkserver', 'spawn']"


def test_worker_resources_route_a_study_to_the_workers_that_carry_them(tmp_path):
    from distributed import Client
    from distributed import LocalCluster

    from studyflow import optimize

    with LocalCluster(n_workers=1, threads_per_worker=1, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        plain = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                  "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"])
        try:
            with Client(cluster) as client:
                client.wait_for_workers(2, timeout=60)
                gpu = [a for a, w in client.scheduler_info()["workers"].items() if w["resources"].get("GPU")]
                study = {"objective": "sf_objectives:sleepy", "budget": {"n_trials": 12},
                         "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
                         "worker_resources": {"GPU": 1}}
                result = optimize(None, study, client=client, results_dir=tmp_path, progress=False)
                assert set(result.trials["worker"]) == set(gpu)
                everywhere = optimize(None, {**study, "worker_resources": {}, "name": "anywhere"},
                                      client=client, results_dir=tmp_path, progress=False)
                assert everywhere.trials["worker"].nunique() == 2
        finally:
            plain.terminate()
            plain.wait(timeout=30)


SCRIPT_RAISING = '''\
import studyflow


def check(x):
    if x < 0.5:
        raise ValueError("x too small for this backtest")
    return x


def objective(trial):
    return check(trial.suggest_float("x", 0, 1))


CALL
'''
RAISING_CALL = '''\
result = studyflow.optimize(objective, {"name": "raising", "sampler": {"name": "random", "seed": 0},
                                        "budget": {"n_trials": 6}}, n_workers=1, progress=False)
print(sorted(set(result.trials["state"])))
'''


@pytest.mark.parametrize("guarded", [False, True], ids=["no main guard", "main guard"])
def test_a_scripts_failing_trial_shows_the_scripts_file_and_line_in_its_traceback(tmp_path, guarded):
    """A trial's traceback names where the objective raised, as plain Optuna's does. The
    objective reached its worker by value, and cloudpickle (3.1) names every such function's
    file `<dynamic-code>`: the log said `File "<dynamic-code>", line 6, in check`, with no
    source line, and the user had to guess which function of which file that was."""
    call = ("if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in RAISING_CALL.splitlines())
            if guarded else RAISING_CALL)
    (tmp_path / "tune.py").write_text(SCRIPT_RAISING.replace("CALL\n", call))
    proc = subprocess.run([sys.executable, "tune.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "['COMPLETE', 'FAIL']"
    assert "<dynamic-code>" not in proc.stderr
    script = tmp_path / "tune.py"
    assert f'File "{script}", line 11, in objective\n    return check(trial.suggest_float("x", 0, 1))' in proc.stderr
    assert f'File "{script}", line 6, in check\n    raise ValueError("x too small for this backtest")' in proc.stderr
