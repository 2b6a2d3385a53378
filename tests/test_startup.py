"""Start fast: local workers fork from a forkserver that has already imported what a trial
needs, the study's objective module included, without giving up what spawned workers had."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pandas as pd
import psutil
import pytest
import tornado.netutil

PROBE = textwrap.dedent('''
    import os

    IMPORTED_IN = os.getpid()  # the process that ran this module's top level


    def objective(trial):
        trial.set_user_attr("imported_before_the_worker_started", IMPORTED_IN != os.getpid())
        return trial.suggest_float("x", 0, 1)
''')


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studyflow.cli", "run", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def _completed(tmp_path, write_study, name: str, source: str, n_trials: int,
               env: dict[str, str] | None = None) -> tuple[pd.DataFrame, int]:
    """`studyflow run` (2 workers) of a study of module `name` (`source`, with an `objective`):
    its trials table, every trial checked COMPLETE, and the driver's pid."""
    (tmp_path / f"{name}.py").write_text(source)
    study = write_study(name, objective=f"{name}:objective", budget={"n_trials": n_trials})
    driver = subprocess.Popen([sys.executable, "-m", "studyflow.cli", "run", str(study), "--workers", "2"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert "RuntimeWarning" not in err, err  # the workers re-run `python -m studyflow.cli` as their main
    trials = pd.read_parquet(tmp_path / "results" / "studies" / name / "trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == n_trials
    return trials, driver.pid


def test_workers_start_with_the_objective_module_already_imported(tmp_path, write_study):
    trials, _ = _completed(tmp_path, write_study, "probe", PROBE, 8)
    assert trials["user_attrs_imported_before_the_worker_started"].all()


TLS_PROBE = textwrap.dedent('''
    import os

    import tornado.netutil

    IMPORTED_IN = os.getpid()
    # read where this module is imported: in the forkserver, before any worker is forked from it
    TLS_DEFAULTS_BUILT = tornado.netutil._client_ssl_defaults.cache_info().currsize == 1


    def objective(trial):
        trial.set_user_attr("imported_before_the_worker_started", IMPORTED_IN != os.getpid())
        trial.set_user_attr("tls_defaults_built_before_the_worker_started", TLS_DEFAULTS_BUILT)
        return trial.suggest_float("x", 0, 1)
''')


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(
    getattr(tornado.netutil, "_client_ssl_defaults", None), "cache_info"),
    reason="built in the forkserver on Linux, with a tornado that builds it lazily")
def test_workers_start_with_tornados_default_tls_context_already_built(tmp_path, write_study):
    """tornado builds it (the system's CA bundle, ~30 ms of CPU) at a process's first accepted
    TLS connection, the one that checks the objective on the first worker too; a worker
    forked from studyflow's forkserver has it already."""
    trials, _ = _completed(tmp_path, write_study, "tls_probe", TLS_PROBE, 4)
    assert trials["user_attrs_imported_before_the_worker_started"].all()
    assert trials["user_attrs_tls_defaults_built_before_the_worker_started"].all()


DRIVER_TLS_LOADS = textwrap.dedent('''
    import tornado.netutil

    from studyflow.driver._cluster import connect

    with connect(2) as client:  # a local cluster, TLS on (the default)
        assert client.submit(sum, [1, 2]).result() == 3
        print(tornado.netutil._client_ssl_defaults.cache_info().misses)
''')


@pytest.mark.skipif(not hasattr(getattr(tornado.netutil, "_client_ssl_defaults", None), "cache_info"),
                    reason="a tornado that builds its default TLS context lazily")
def test_the_driver_loads_the_ca_bundle_once_while_its_cluster_starts(tmp_path):
    """The driver builds tornado's default TLS context on a thread as the cluster starts; its
    event loop, accepting the first TLS connection meanwhile, waits for that one instead of
    loading the system's CA bundle a second time (33-40 ms on the loop, in every run)."""
    run = subprocess.run([sys.executable, "-c", DRIVER_TLS_LOADS], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1"]


GC_PROBE = textwrap.dedent('''
    import gc

    import yaml


    def objective(trial):
        trial.set_user_attr("collects", gc.isenabled())
        trial.set_user_attr("frozen", gc.get_freeze_count())
        trial.set_user_attr("plain_yaml", yaml.safe_load.__module__ == "yaml")
        return trial.suggest_float("x", 0, 1)
''')


def test_workers_collect_garbage_as_usual_but_skip_what_their_forkserver_imported(tmp_path, write_study):
    """The forkserver imports with collection off (no 30 ms full collections mid-import) and
    freezes what it imported before it forks: a worker's collections skip those objects (and
    leave their memory pages shared), and a worker collects its own garbage as usual."""
    trials, _ = _completed(tmp_path, write_study, "gc_probe", GC_PROBE, 4)
    assert trials["user_attrs_collects"].all()
    assert (trials["user_attrs_frozen"] > 100_000).all()  # Dask's, numpy's and Optuna's objects
    assert trials["user_attrs_plain_yaml"].all()  # libyaml parsed Dask's settings only (`_yaml`)


def test_dask_settings_parsed_with_libyaml_are_the_ones_pyyaml_parses():
    """The driver and the forkserver import Dask with `yaml.safe_load` on libyaml (`_yaml`):
    the same settings from the files Dask reads, and PyYAML's own function back afterwards."""
    import importlib.util
    from pathlib import Path

    import yaml

    from studyflow._yaml import libyaml_safe_load

    plain = yaml.safe_load
    for package, name in (("dask", "dask.yaml"), ("distributed", "distributed.yaml")):
        text = (Path(importlib.util.find_spec(package).origin).parent / name).read_text()
        with libyaml_safe_load():
            assert (yaml.safe_load is not plain) == yaml.__with_libyaml__  # (PyYAML's wheels have it)
            parsed = yaml.safe_load(text)
        assert parsed == plain(text) and len(parsed) > 0
    assert yaml.safe_load is plain


EXIT_PROBE = textwrap.dedent('''
    import atexit
    import os
    from pathlib import Path

    # imported by the forkserver: this handler runs when the forkserver ends
    atexit.register(lambda: Path("atexit_ran_in").open("a").write(f"{os.getpid()}\\n"))


    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("forked_from", os.getppid())
        return trial.suggest_float("x", 0, 1)
''')


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _still_running(pids: set[int], within_s: float) -> set[int]:
    """Those of `pids` still running (not zombies) after up to `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        alive = {pid for pid in pids if _running(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_the_command_leaves_no_worker_behind_though_it_does_not_wait_to_close_the_cluster(
        tmp_path, write_study):
    """`studyflow run` exits once its outputs are written, without closing its local cluster:
    its workers and their forkserver end with it, and the forkserver still runs the objective
    module's atexit handlers."""
    trials, _ = _completed(tmp_path, write_study, "exit_probe", EXIT_PROBE, 6)
    workers = set(trials["user_attrs_pid"])
    forkservers = set(trials["user_attrs_forked_from"])
    assert workers and len(forkservers) == 1
    assert not _still_running(workers | forkservers, within_s=10)
    assert [int(pid) for pid in (tmp_path / "atexit_ran_in").read_text().split()] == list(forkservers)


def _last_error_line(tmp_path, write_study, name: str, source: str) -> tuple[str, str]:
    """`studyflow run` (2 workers) of a study of module `name` (`source`), which must fail:
    the last line of its stderr, and the whole of it."""
    (tmp_path / f"{name}.py").write_text(source)
    study = write_study(name, objective=f"{name}:objective", budget={"n_trials": 4})
    run = _run(tmp_path, str(study), "--workers", "2")
    assert run.returncode == 1, run.stderr
    return run.stderr.strip().splitlines()[-1], run.stderr


def test_an_objective_module_that_fails_to_import_still_fails_in_one_line(tmp_path, write_study):
    last, err = _last_error_line(tmp_path, write_study, "broken", "raise RuntimeError('no licence server')\n")
    assert last.startswith("studyflow: error:") and "broken" in last and "no licence server" in last, err


def test_an_objective_module_that_crashes_its_process_at_import_fails_in_one_line(tmp_path, write_study):
    """A native crash at import (a broken C extension, a CUDA library) kills the workers'
    forkserver, which imports the module first, or, when multiprocessing started it again
    without that preload, the worker that checks the objective: one line naming the study
    file, the key and the module, not Dask's KilledWorker or "Nanny failed to start" traceback."""
    crash = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    last, err = _last_error_line(tmp_path, write_study, "crashes", crash)
    assert last.startswith("studyflow: error:") and "crashes.yaml" in last and "objective" in last, err
    assert "'crashes'" in last and "killed" in last, err
    assert "KilledWorker" not in err and "Nanny failed to start" not in err, err
    assert not (tmp_path / "results" / "studies" / "crashes").exists()  # nothing written


def test_a_variable_set_after_the_first_cluster_still_reaches_the_next_clusters_workers(monkeypatch):
    import os

    from studyflow.driver import connect

    with connect(1):
        pass  # the forkserver is running now, with the environment of this moment
    monkeypatch.setenv("SF_SET_LATER", "seen")
    with connect(1) as client:
        seen = client.run(lambda: os.environ.get("SF_SET_LATER"))
    assert list(seen.values()) == ["seen"]


PANDAS_PROBE = textwrap.dedent('''
    import sys


    def objective(trial):
        trial.set_user_attr("pandas_loaded", "pandas" in sys.modules)
        return trial.suggest_float("x", 0, 1)
''')


def test_a_study_without_data_runs_start_to_end_without_importing_pandas(tmp_path, write_study):
    """pandas is ~0.35 s of CPU per process. A study with no table to read never loads it: not
    in the workers (from the forkserver on), nor in the driver, whose trials table is built and
    written with pyarrow alone (`outputs._trials_table`). With 6 trials of 2 parameters the
    driver also asks a worker for the card's importances."""
    two_params = 'return trial.suggest_float("x", 0, 1) + trial.suggest_float("y", 0, 1)'
    (tmp_path / "no_tables.py").write_text(PANDAS_PROBE.replace('return trial.suggest_float("x", 0, 1)', two_params))
    study = write_study("no_tables", objective="no_tables:objective", budget={"n_trials": 6})
    whole_run = ("import sys; from studyflow.cli import main; code = main(sys.argv[1:]); "
                 "print(sorted({'pandas'} & set(sys.modules))); sys.exit(code)")
    driver = subprocess.run([sys.executable, "-c", whole_run, "run", str(study), "--workers", "2"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert driver.returncode == 0, driver.stderr
    assert driver.stdout.strip().splitlines()[-1] == "[]"  # the driver, after writing its outputs
    trials = pd.read_parquet(tmp_path / "results" / "studies" / "no_tables" / "trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == 6
    assert not trials["user_attrs_pandas_loaded"].any()  # the workers


IMPORT_PROBE = textwrap.dedent('''
    import os

    with open(os.environ["SF_IMPORTED_BY"], "a") as f:
        f.write(f"{os.getpid()}\\n")


    def objective(trial):
        return trial.suggest_float("x", 0, 1)
''')


def test_the_objective_module_is_imported_by_the_workers_not_by_the_driver_of_a_local_cluster(tmp_path, write_study):
    """The workers import it anyway (their forkserver does, once); in the driver it was only a
    check, and scikit-learn's import alone is a second of CPU taken from the workers' start."""
    import os

    imported_by = tmp_path / "imported_by.txt"
    _, driver = _completed(tmp_path, write_study, "heavy", IMPORT_PROBE, 4,
                           env={**os.environ, "SF_IMPORTED_BY": str(imported_by)})
    pids = {int(line) for line in imported_by.read_text().split()}
    assert pids and driver not in pids


def test_the_driver_checks_its_data_while_pandas_is_half_imported_on_the_table_thread():
    """The driver imports pandas on a thread while its study runs; asking meanwhile whether the
    study's data is a DataFrame must not trip over the half-imported module (CI caught it)."""
    probe = textwrap.dedent('''
        import sys, threading
        from studyflow.driver._data import is_frame

        assert "pandas" not in sys.modules
        threading.Thread(target=lambda: __import__("pandas"), daemon=True).start()
        seen_half = 0
        while not hasattr(sys.modules.get("pandas"), "DataFrame"):
            seen_half += "pandas" in sys.modules
            assert is_frame(None) is False and is_frame("data.parquet") is False
        import pandas
        assert is_frame(pandas.DataFrame({"x": [1]})) is True
        print("half-imported pandas seen", seen_half, "times")
    ''')
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "seen 0 times" not in out.stdout, "the probe never caught pandas half-imported"


def test_starting_a_local_cluster_does_not_import_pandas_into_the_driver():
    """distributed names every package it knows of as the forkserver's preload, importing each
    in the driver first (pandas: ~0.4 s of CPU while the workers start); studyflow's forkserver
    has its own list, so the driver of a study without data is spared it until its tables."""
    probe = textwrap.dedent('''
        import sys
        from studyflow.driver._cluster import connect

        with connect(2) as client:
            assert len(client.scheduler_info()["workers"]) == 2
            assert client.submit(sum, [1, 2]).result() == 3
            print(sorted({"pandas", "lz4"} & set(sys.modules)))
    ''')
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
