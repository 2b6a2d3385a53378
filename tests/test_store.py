"""The trial store and reproducible scheduling: the same answer, never paid for twice."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from studyflow import optimize
from studyflow.driver import connect

SPACE = {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}}
TIMING = ["datetime_start", "datetime_complete", "duration_s", "worker", "cached", "artifacts"]


def reproducible(sampler: str, n_trials: int = 24, **extra) -> dict:
    return {"objective": "sf_objectives:jittery", "search_space": SPACE, "scheduling": "reproducible",
            "concurrency": 4, "sampler": {"name": sampler, "seed": 11}, "budget": {"n_trials": n_trials}, **extra}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_reproducible_study_gives_the_same_trials_on_1_2_and_4_workers(sampler, tmp_path):
    tables = {}
    for workers in (1, 2, 4):
        with connect(workers) as client:
            result = optimize(None, reproducible(sampler), client=client,
                              results_dir=tmp_path / str(workers), progress=False)
        tables[workers] = result.trials.set_index("number")[["params_x", "params_y", "value", "key"]]
    pd.testing.assert_frame_equal(tables[1], tables[2])
    pd.testing.assert_frame_equal(tables[1], tables[4])
    assert tables[1]["key"].is_unique


def test_async_tpe_with_8_in_flight_is_not_the_same_as_reproducible(client4, tmp_path):
    """Guard against a vacuous pass above: TPE's later trials do depend on what it saw."""
    seq = optimize(None, reproducible("tpe", concurrency=1), client=client4, results_dir=tmp_path / "a", progress=False)
    par = optimize(None, reproducible("tpe", concurrency=4), client=client4, results_dir=tmp_path / "b", progress=False)
    assert not seq.trials["params_x"].equals(par.trials["params_x"])


@pytest.fixture
def counting_client(tmp_path, monkeypatch):
    """A fresh 4-worker cluster whose workers see $SF_COUNT_FILE (set before they spawn)."""
    monkeypatch.setenv("SF_COUNT_FILE", str(tmp_path / "count.txt"))
    with connect(4) as client:
        yield client


def test_rerun_against_the_store_evaluates_nothing_and_rewrites_the_same_table(counting_client, tmp_path):
    client4 = counting_client
    study = dict(reproducible("tpe", n_trials=16), objective="sf_objectives:counted",
                 search_space={"x": SPACE["x"]})
    first = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    assert len((tmp_path / "count.txt").read_text().splitlines()) == 16
    shutil.rmtree(tmp_path / "results/.store/journals")  # lose the study, keep the trial store
    second = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    assert len((tmp_path / "count.txt").read_text().splitlines()) == 16  # zero new evaluations
    assert second.trials["cached"].all() and not first.trials["cached"].any()
    pd.testing.assert_frame_equal(first.trials.drop(columns=TIMING), second.trials.drop(columns=TIMING))
    # no objective ran: the last window's trials, told at the close, showed 0.17 s
    assert (second.trials["duration_s"] == 0).all(), second.trials["duration_s"].tolist()


def test_a_store_written_in_the_old_layout_still_answers_a_rerun(counting_client, tmp_path):
    """Stores from before the results logs kept each result in trials/<k2>/<key>/result.json."""
    study = {"objective": "sf_objectives:counted", "search_space": {"x": SPACE["x"]},
             "scheduling": "reproducible", "concurrency": 4, "sampler": {"name": "tpe", "seed": 3},
             "budget": {"n_trials": 8}}
    first = optimize(None, study, client=counting_client, results_dir=tmp_path / "results", progress=False)
    store = tmp_path / "results/.store"
    lines = [line for log in (store / "results").glob("*.jsonl") for line in log.read_text().splitlines()]
    assert len(lines) == 8 and not (store / "trials").exists()  # no folder for a trial without files
    for line in lines:  # rewrite the store as the old layout had it
        key = json.loads(line)["key"]
        (store / "trials" / key[:2] / key).mkdir(parents=True)
        (store / "trials" / key[:2] / key / "result.json").write_text(line)
    shutil.rmtree(store / "results")
    shutil.rmtree(tmp_path / "results/.store/journals")
    second = optimize(None, study, client=counting_client, results_dir=tmp_path / "results", progress=False)
    assert len((tmp_path / "count.txt").read_text().splitlines()) == 8  # zero new evaluations
    assert second.trials["cached"].all()
    pd.testing.assert_frame_equal(first.trials.drop(columns=TIMING), second.trials.drop(columns=TIMING))


def test_raising_n_trials_evaluates_only_the_new_trials(counting_client, tmp_path):
    client4 = counting_client
    study = {"objective": "sf_objectives:counted", "search_space": {"x": SPACE["x"]},
             "sampler": {"name": "tpe", "seed": 1}, "budget": {"n_trials": 10}}
    optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    more = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False,
                    overrides=["budget.n_trials=20"])
    assert len((tmp_path / "count.txt").read_text().splitlines()) == 20
    assert more.trials["number"].tolist() == list(range(20))
    assert (more.trials["state"] == "COMPLETE").all()


def test_editing_the_objectives_module_invalidates_only_that_studys_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SF_COUNT_FILE", str(tmp_path / "count.txt"))
    (tmp_path / "edited_obj.py").write_text(
        "import os\n"
        "def objective(trial):\n"
        "    open(os.environ['SF_COUNT_FILE'], 'a').write('edited\\n')\n"
        "    return trial.params['x']\n"
    )
    studies = {
        "edited": {"objective": "edited_obj:objective", "search_space": {"x": SPACE["x"]},
                   "scheduling": "reproducible", "sampler": {"name": "random", "seed": 3}, "budget": {"n_trials": 6}},
        "other": {"objective": "sf_objectives:counted", "search_space": {"x": SPACE["x"]},
                  "scheduling": "reproducible", "sampler": {"name": "random", "seed": 3}, "budget": {"n_trials": 6}},
    }
    monkeypatch.chdir(tmp_path)

    def run_both() -> list[str]:
        for name, study in studies.items():
            proc = subprocess.run([sys.executable, "-c", (
                "import studyflow, sys\n"
                f"studyflow.optimize(None, {study!r}, n_workers=2, progress=False)\n")],
                cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr[-2000:]
        lines = (tmp_path / "count.txt").read_text().splitlines()
        return ["edited" if line == "edited" else "other" for line in lines]

    assert run_both().count("edited") == 6
    shutil.rmtree(tmp_path / "results/.store/journals")  # reruns start from the store alone
    assert run_both() == ["edited"] * 6 + ["other"] * 6  # nothing evaluated again
    source = (tmp_path / "edited_obj.py").read_text()
    (tmp_path / "edited_obj.py").write_text(source.replace("return trial.params['x']", "return 2 * trial.params['x']"))
    shutil.rmtree(tmp_path / "results/.store/journals")
    evaluations = run_both()
    assert evaluations.count("edited") == 12  # the edited objective's trials ran again
    assert evaluations.count("other") == 6  # the other study was answered from the store


def test_the_same_key_is_never_evaluated_twice(counting_client, tmp_path):
    client4 = counting_client
    study = {"objective": "sf_objectives:logged_key", "sampler": {"name": "random", "seed": 0},
             "search_space": {"c": {"type": "categorical", "choices": ["a", "b"]},
                              "k": {"type": "int", "low": 0, "high": 1}},
             "budget": {"n_trials": 24}}
    result = optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    log = [line.split() for line in (tmp_path / "count.txt").read_text().splitlines()]
    keys = [key for key, _, _ in log]
    assert len(keys) == len(set(keys)) <= 4  # 4 distinct trials at most, each evaluated once
    assert len(result.trials) == 24 and (result.trials["state"] == "COMPLETE").all()
    assert result.trials["cached"].sum() == 24 - len(keys)
    values = result.trials.groupby("key")["value"].nunique()
    assert (values == 1).all()  # every trial of a key got the one evaluation's value


class Shifted:
    """Optuna's FAQ way to give an objective arguments: a callable instance."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self, trial) -> float:
        return trial.suggest_float("x", 0, 1) + self.offset


def shifted(trial, offset: float) -> float:
    return trial.suggest_float("x", 0, 1) + offset


def _closure(offset: float):
    def objective(trial) -> float:
        return trial.suggest_float("x", 0, 1) + offset
    return objective


@pytest.mark.parametrize("make", [Shifted, lambda offset: functools.partial(shifted, offset=offset), _closure],
                         ids=["instance", "partial", "closure"])
def test_objectives_built_at_run_time_are_keyed_by_what_they_carry(client4, tmp_path, make):
    study = {"search_space": {"x": SPACE["x"]}, "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 4}}

    def run(objective):
        return optimize(objective, study, client=client4, results_dir=tmp_path, progress=False).trials

    zero, hundred, again = run(make(0.0)), run(make(100.0)), run(make(100.0))
    assert ((hundred["value"] - zero["value"]).round(9) == 100).all()  # not the first one's journal or store
    assert not hundred["cached"].any()
    assert again["value"].tolist() == hundred["value"].tolist()  # the same one again: its journal, resumed


def test_a_study_file_without_objective_runs_the_callable_given_to_optimize(client4, tmp_path):
    path = tmp_path / "own.yaml"  # the user's own file: the objective is the one passed in Python
    path.write_text("direction: minimize\nsearch_space:\n  x: {type: float, low: 0, high: 1}\n"
                    "sampler: {name: random, seed: 0}\nbudget: {n_trials: 3}\n")
    result = optimize(_closure(5.0), path, client=client4, results_dir=tmp_path, progress=False)
    assert (result.trials["value"] >= 5).all() and len(result.trials) == 3
    assert result.config.objective.endswith("_closure.<locals>.objective")


def test_artifacts_are_kept_under_the_trials_key(client4, tmp_path):
    def objective(trial):
        (trial.artifact_dir / "model.txt").write_text(f"{trial.params['x']} seed={trial.seed}")
        return trial.params["x"]

    study = {"objective": "unused:unused", "search_space": {"x": SPACE["x"]}, "budget": {"n_trials": 5}}
    result = optimize(objective, study, client=client4, results_dir=tmp_path, progress=False)
    for row in result.trials.itertuples():
        folder = Path(row.artifacts)
        assert folder.name == "artifacts" and folder.parent.name == row.key
        assert (folder / "model.txt").read_text().startswith(str(row.params_x))
    assert not list(tmp_path.glob(".store/trials/*/*/.staging-*"))
    from studyflow.outputs import summarize

    result.write(tmp_path / "studies/study")
    _, _, artifacts = summarize([tmp_path / "studies/study"])
    assert sorted(artifacts["key"]) == sorted(result.trials["key"])  # the summary lists them by key


def test_the_staging_folder_a_lease_names_is_the_one_the_store_moves_from(tmp_path, monkeypatch):
    from studyflow.store import TrialStore

    monkeypatch.chdir(tmp_path)
    for root in (tmp_path / ".store", Path("results/.store"), Path("./results/.store/")):
        store = TrialStore(root)
        key = "ab" + "0" * 30
        assert store.staging_path(key, 7) == os.path.join(root, "trials", "ab", key, ".staging-7")
        assert store.staging_dir(key, 7) == store.entry(key) / ".staging-7"


def test_store_ls_and_gc(client4, tmp_path):
    study = {"objective": "sf_objectives:instant", "search_space": {"x": SPACE["x"]}, "budget": {"n_trials": 7}}
    optimize(None, study, client=client4, results_dir=tmp_path / "results", progress=False)
    ls = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", "ls"], cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout
    assert "7 trials" in ls and "COMPLETE: 7" in ls
    gc = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", "gc"], cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout
    assert gc.startswith("removed 0 entries")
    shutil.rmtree(tmp_path / "results/.store/journals")
    gc = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", "gc"], cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout
    assert gc.startswith("removed 7 entries")




def test_store_ls_and_gc_of_a_folder_without_a_store_say_so_and_make_nothing(tmp_path):
    """A mistyped --results: gc made `<folder>/.store` and said it removed 0 entries; ls listed 0 trials."""
    for action in ("ls", "gc"):
        proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", action, "--results", "resluts"],
                              cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 1, proc.stdout
        assert proc.stderr == "studyflow: error: resluts/.store: no trial store here; check --results\n"
    assert not (tmp_path / "resluts").exists()


def test_gc_removes_the_staging_folders_a_killed_run_left_under_keys_journals_refer_to(tmp_path, monkeypatch):
    """A run killed mid-trial left each running trial's staging folder (its partial artifacts)
    under a key its journal refers to: the resume re-ran the trial, and gc kept the folder
    forever (`store ls`: "incomplete"), space lost on what may be a full disk."""
    import signal
    import time

    monkeypatch.setenv("SF_COUNT_FILE", str(tmp_path / "evaluations.txt"))
    monkeypatch.setenv("SF_SLEEP", "0.5")
    study = {"objective": "sf_objectives:stages_then_sleeps", "search_space": {"x": SPACE["x"]},
             "sampler": {"name": "random", "seed": 1}, "budget": {"n_trials": 8}}
    (tmp_path / "study.yaml").write_text(json.dumps(study))
    cmd = [sys.executable, "-m", "studyflow.cli", "run", "study.yaml", "--workers", "2"]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline, evaluations = time.monotonic() + 120, tmp_path / "evaluations.txt"
    while not evaluations.exists() or len(evaluations.read_text().split()) < 4:  # two begun after two done
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    left = sorted(tmp_path.glob("results/.store/trials/*/*/.staging-*"))  # the killed trials'
    gc = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", "gc"], cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout
    assert left and sorted(tmp_path.glob("results/.store/trials/*/*/.staging-*")) == left, gc  # still running
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300).returncode == 0
    assert set(left) <= set(tmp_path.glob("results/.store/trials/*/*/.staging-*"))  # settled, not removed
    gc = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", "gc"], cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout
    assert gc.startswith("removed 0 entries") and not gc.endswith("freed 0.0 MB\n"), gc
    assert not list(tmp_path.glob("results/.store/trials/*/*/.staging-*"))
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == 8 and all((Path(a) / "model.bin").stat().st_size == 100_000 for a in complete["artifacts"])
    ls = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", "ls"], cwd=tmp_path,
                        capture_output=True, text=True, check=True).stdout
    assert "incomplete" not in ls and "COMPLETE: 8" in ls, ls


def test_a_torn_last_result_line_is_skipped_and_gc_keeps_what_journals_refer_to(tmp_path, caplog):
    """A server killed mid-append leaves half a line: the results before it still answer."""
    from studyflow.store import StoredResult
    from studyflow.store import TrialStore

    store = TrialStore(tmp_path)
    for key in ("aa11", "bb22"):
        store.put(StoredResult(key, "COMPLETE", [1.0], params={"x": 0.5}))
    store.close()
    log = next((tmp_path / "results").glob("*.jsonl"))
    with open(log, "a") as f:
        f.write('{"key": "cc33", "state": "COMP')  # the kill
    reread = TrialStore(tmp_path)
    assert reread.get("aa11").values == [1.0] and reread.get("bb22") is not None
    assert reread.get("cc33") is None and "torn" in caplog.text
    bb_line = next(line for line in log.read_text().splitlines(keepends=True) if '"bb22"' in line)
    assert reread.prune({"aa11"}) == (1, len(bb_line))  # gc: keys no journal refers to
    assert TrialStore(tmp_path).keys() == ["aa11"] and len(log.read_text().splitlines()) == 1
    artifact = TrialStore(tmp_path).artifacts_dir("aa11") / "result.json"  # a user file, same name
    artifact.parent.mkdir(parents=True)
    artifact.write_text("0123456789")
    assert TrialStore(tmp_path).size_bytes("aa11") == len(log.read_text()) + 10


def test_a_study_stopped_before_any_trial_ran_still_writes_a_trials_table_with_its_columns(tmp_path):
    from studyflow.outputs import trials_frame
    from studyflow.outputs import write_parquet

    path = write_parquet(trials_frame([], ["values_0", "values_1"]), tmp_path / "trials.parquet")
    table = pd.read_parquet(path)
    assert len(table) == 0
    assert {"number", "state", "values_0", "values_1", "error", "key"} <= set(table.columns)
    assert (table["state"] == "COMPLETE").sum() == 0  # filters users write work on it


GATED = '''
import os, time
from pathlib import Path

def objective(trial):
    """Trials from GATE_AT on wait for the file $SF_GATE: the study runs until the test lets it end."""
    x = trial.suggest_float("x", 0, 1)
    if trial.number >= int(os.environ["SF_GATE_AT"]):
        deadline = time.monotonic() + 300
        while not Path(os.environ["SF_GATE"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return x
'''


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the study ended before {what}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_gc_refuses_while_a_study_runs_and_every_told_trial_stays_in_the_store(tmp_path):
    """`studyflow store gc` while a real `studyflow run` appends to the store: gc refuses in one
    line naming the running study and changes nothing; once the study has finished, gc runs,
    and every trial the study told is in the store and in trials.parquet."""
    import os

    from studyflow.cli import main
    from studyflow.store import StoredResult
    from studyflow.store import TrialStore

    store_root = tmp_path / "results/.store"
    orphan = TrialStore(store_root)  # an entry no journal refers to: gc's work
    orphan.put(StoredResult("ff" * 16, "COMPLETE", [0.5], params={"x": 0.5}))
    orphan.close()
    (tmp_path / "gated.py").write_text(GATED)
    n_trials, gate = 12, tmp_path / "go"
    study = {"objective": "gated:objective", "search_space": {"x": SPACE["x"]},
             "sampler": {"name": "random", "seed": 5}, "budget": {"n_trials": n_trials}}
    (tmp_path / "study.yaml").write_text(json.dumps(study))
    env = dict(os.environ, SF_GATE=str(gate), SF_GATE_AT="4")
    run = subprocess.Popen([sys.executable, "-m", "studyflow.cli", "run", "study.yaml", "--workers", "2"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def told() -> int:  # results the running study has appended to its own log
            return sum(len(p.read_text().splitlines()) for p in (store_root / "results").glob("*.jsonl")) - 1

        _wait_for(lambda: told() >= 4, "4 trials were told", run)
        logs_before = {p.name: p.read_bytes() for p in (store_root / "results").glob("*.jsonl")}
        gc = subprocess.run([sys.executable, "-m", "studyflow.cli", "store", "gc"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
        assert gc.returncode == 1, gc.stdout + gc.stderr
        (line,) = [x for x in gc.stderr.splitlines() if x.strip()]
        assert line.startswith("studyflow: error:") and "study study is running" in line, line
        assert "pid" in line
        after = {p.name: p.read_bytes() for p in (store_root / "results").glob("*.jsonl")}
        assert all(after[name].startswith(text) for name, text in logs_before.items())  # nothing rewritten
        assert TrialStore(store_root).get("ff" * 16) is not None
    finally:
        gate.touch()
        out, err = run.communicate(timeout=240)
    assert run.returncode == 0, err[-3000:]

    assert main(["store", "gc", "--results", str(tmp_path / "results")]) == 0
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == n_trials
    store = TrialStore(store_root)
    assert store.get("ff" * 16) is None  # collected once the study had finished
    for key, value in zip(complete["key"], complete["value"]):
        assert store.get(key).values == [value]


def test_a_store_that_cannot_be_written_costs_one_line_and_no_trial(tmp_path):
    """The store's results cannot be written (here its results folder is a file: every open
    fails, as on a full disk): the study still finishes with every trial in its journal and
    tables, the run logs one line about the store and no traceback, and it does not hang."""
    store_root = tmp_path / "results/.store"
    store_root.mkdir(parents=True)
    (store_root / "results").write_text("not a folder\n")
    study = {"objective": "sf_objectives:instant", "search_space": {"x": SPACE["x"]},
             "sampler": {"name": "random", "seed": 2}, "budget": {"n_trials": 30}}
    (tmp_path / "study.yaml").write_text(json.dumps(study))
    run = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", "study.yaml", "--workers", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    (line,) = [x for x in run.stderr.splitlines() if "trial store" in x]
    assert f"cannot write results to {store_root.resolve() / 'results'}" in line, line
    trials = pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == 30
