"""Hooks from Python (callbacks, progress_callback) and warm starts (enqueue, warm_start)."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

import sf_objectives
import studyflow.driver._run
from studyflow import ConfigError
from studyflow import load_study
from studyflow import optimize
from studyflow._attrs import WARM_START_ATTR
from studyflow.optuna_ext import warm_trials

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _run(client, tmp_path, study, **kwargs):
    return optimize(None, study, client=client, results_dir=tmp_path, progress=False, **kwargs)


CALLED_STUDIES = {
    "async, some trials fail": {"objective": "sf_objectives:raises_when_large"},
    "reproducible: outcomes applied late": {"objective": "sf_objectives:raises_when_large",
                                            "scheduling": "reproducible", "concurrency": 3},
    "pruned trials": {"objective": "sf_objectives:learning_curve", "pruner": {"name": "median"}},
}


@pytest.mark.parametrize("kind", list(CALLED_STUDIES))
def test_callbacks_get_every_finished_trial_once_with_a_real_study_that_grows(
    client4, tmp_path, kind
):
    calls = []

    def record(study, trial):
        assert isinstance(study, optuna.Study) and isinstance(trial, FrozenTrial)
        finished = study.get_trials(states=FINISHED)
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        best = study.best_trial if complete else None
        calls.append((trial, len(finished), best))

    study = {"search_space": SPACE, "name": "called", "sampler": {"name": "random", "seed": 4},
             "budget": {"n_trials": 15, "max_failures": 100}, **CALLED_STUDIES[kind]}
    result = _run(client4, tmp_path, study, callbacks=[record])
    table = result.trials.set_index("number")
    numbers = [t.number for t, _, _ in calls]
    assert sorted(numbers) == sorted(table.index)  # once each; trials held but not run: never
    assert (table["state"] == ("PRUNED" if "pruned" in kind else "FAIL")).any()  # called back too
    assert [n for _, n, _ in calls] == list(range(1, len(calls) + 1))
    for trial, _, best in calls:
        row = table.loc[trial.number]
        assert trial.state.name == row["state"] and trial.params == {"x": row["params_x"]}
        assert trial.value == (None if math.isnan(row["value"]) else row["value"])
        so_far = [t for t, _, _ in calls[:numbers.index(trial.number) + 1]]
        seen = [t for t in so_far if t.state == TrialState.COMPLETE]
        if seen:  # the mirror numbers trials as the server does: its best is the one seen
            assert best.number == min(seen, key=lambda t: t.value).number


def test_progress_callback_counts_finished_trials_one_by_one_to_the_budget(client4, tmp_path):
    calls = []
    study = {"objective": "sf_objectives:instant", "search_space": SPACE,
             "budget": {"n_trials": 12}}
    _run(client4, tmp_path, study,
         progress_callback=lambda done, total: calls.append((done, total)))
    assert calls == [(n, 12) for n in range(1, 13)]


def test_a_callback_that_raises_stops_the_study_and_its_error_propagates(client4, tmp_path):
    calls = []

    def boom(study, trial):
        calls.append(trial.number)
        if len(calls) == 3:
            raise RuntimeError("callback refused")

    study = {"objective": "sf_objectives:sleepy", "search_space": SPACE, "name": "stopped",
             "budget": {"n_trials": 200}}
    with pytest.raises(RuntimeError, match="callback refused") as info:
        _run(client4, tmp_path, study, callbacks=[boom])
    assert any("boom on trial" in note and "stopped" in note for note in info.value.__notes__)
    assert len(calls) == 3
    journal = next((tmp_path / ".store" / "journals").glob("stopped-*.log"))
    loaded = optuna.load_study(study_name="stopped", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert len(loaded.get_trials(states=(TrialState.COMPLETE,))) < 100


def test_a_callback_calling_study_stop_ends_the_study_after_its_running_trials(client4, tmp_path):
    # Optuna's own MaxTrialsCallback, as a script passes it to study.optimize
    stop_at_5 = optuna.study.MaxTrialsCallback(5, states=(TrialState.COMPLETE,))
    study = {"objective": "sf_objectives:sleepy", "search_space": SPACE, "budget": {"n_trials": 200}}
    result = _run(client4, tmp_path, study, callbacks=[stop_at_5])
    assert result.stop_reason == "study.stop()"
    assert set(result.trials["state"]) == {"COMPLETE"}  # the running ones finished; none was held back
    assert 5 <= len(result.trials) < 40  # of 200: the trials that ran before the driver's poll called it


def test_optunas_terminator_callback_reads_the_cross_validation_scores_the_objective_reported(client4, tmp_path):
    import warnings

    from optuna.terminator import TerminatorCallback

    study = {"objective": "sf_objectives:reports_cv_scores", "sampler": {"name": "tpe", "seed": 1},
             "budget": {"n_trials": 24}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        result = _run(client4, tmp_path, study, callbacks=[TerminatorCallback()])
    assert set(result.trials["state"]) == {"COMPLETE"} and result.stop_reason in ("n_trials", "study.stop()")
    assert all(len(t.system_attrs["terminator:cv_scores"]) == 3 for t in result.study.trials)


def test_an_objective_calling_trial_study_stop_ends_the_study_after_its_running_trials(client4, tmp_path):
    study = {"objective": "sf_objectives:stops_at_trial_3", "search_space": SPACE, "budget": {"n_trials": 200}}
    result = _run(client4, tmp_path, study)
    assert result.stop_reason == "study.stop()"
    assert set(result.trials["state"]) == {"COMPLETE"} and 3 in set(result.trials["number"])
    assert len(result.trials) < 40  # of 200


def test_after_study_stop_no_trial_a_worker_holds_begins(tmp_path, monkeypatch):
    """Optuna's `Study.stop()`: the running trials finish and no new one starts. A worker
    that held its next trial (random search holds them, to hide the round trip) began it
    when its running one ended, not having heard of the stop."""
    monkeypatch.setenv("SF_STARTS", str(tmp_path / "starts.txt"))
    study = {"objective": "sf_objectives:stops_at_trial_3_of_slow_ones", "search_space": SPACE,
             "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 50}}
    result = optimize(None, study, n_workers=2, results_dir=tmp_path, progress=False)
    assert result.stop_reason == "study.stop()"
    lines = dict(line.split() for line in (tmp_path / "starts.txt").read_text().splitlines())
    stopped = float(lines.pop("stop"))
    # a trial beginning as the stop is called may run (its worker hears of it within ms); one
    # held until the running trial ended, 0.3 s later, may not
    late = {n: round(float(t) - stopped, 3) for n, t in lines.items() if float(t) > stopped + 0.1}
    assert not late, f"trials begun after the stop (s after it): {late}"
    assert set(result.trials["state"]) == {"COMPLETE"} and len(result.trials) == len(lines)


def test_enqueued_trials_run_first_with_their_params_and_only_once(client4, tmp_path):
    enqueue = [{"x": 0.25}, {"x": 0.5}, {"x": 0.75}]
    study = {"objective": "sf_objectives:instant", "search_space": SPACE, "enqueue": enqueue,
             "sampler": {"name": "tpe", "seed": 1}, "budget": {"n_trials": 6}, "name": "queued"}
    trials = _run(client4, tmp_path, study).trials
    assert trials["params_x"].tolist()[:3] == [0.25, 0.5, 0.75]
    assert trials["value"].tolist()[:3] == [0.25, 0.5, 0.75]
    resumed = _run(client4, tmp_path, {**study, "budget": {"n_trials": 10}}).trials
    assert len(resumed) == 10 and (resumed["params_x"] == 0.25).sum() == 1  # not enqueued again
    # define-by-run: the objective's own suggests get the enqueued values
    first = {"x": 2.0, "n": 1, "kind": "a"}
    dbr = {"objective": "sf_objectives:quadratic", "enqueue": [first], "budget": {"n_trials": 3}}
    trials = _run(client4, tmp_path / "dbr", dbr).trials
    assert trials.loc[0, ["params_x", "params_n", "params_kind"]].tolist() == [2.0, 1, "a"]
    assert trials.loc[0, "value"] == 1.0


def test_warm_start_from_a_results_folder_steers_tpe_without_spending_the_budget(
    client4, tmp_path
):
    old = {"objective": "sf_objectives:instant", "search_space": SPACE, "name": "old",
           "sampler": {"name": "tpe", "seed": 0}, "budget": {"n_trials": 12}}
    earlier = _run(client4, tmp_path, old)
    earlier.write(tmp_path / "studies" / "old")
    new = {**old, "name": "new", "sampler": {"name": "tpe", "seed": 5}, "budget": {"n_trials": 4}}
    cold = _run(client4, tmp_path, {**new, "name": "cold"})
    warm = _run(client4, tmp_path, {**new, "warm_start": str(tmp_path / "studies" / "old")})
    assert warm.trials["params_x"].iloc[0] != cold.trials["params_x"].iloc[0]
    assert len(warm.trials) == 4 and (warm.trials["state"] == "COMPLETE").all()
    assert warm.trials["number"].tolist() == [12, 13, 14, 15]  # after the 12 warm trials
    journal = warm.study.get_trials()
    copied = [t for t in journal if WARM_START_ATTR in t.system_attrs]
    assert sorted(t.params["x"] for t in copied) == sorted(earlier.trials["params_x"])
    assert warm.best()["best_number"] in warm.trials["number"].tolist()
    again = _run(client4, tmp_path, {**new, "warm_start": str(tmp_path / "studies" / "old"),
                                     "budget": {"n_trials": 6}})
    assert len(again.trials) == 6  # resumed: the warm trials were not added again
    assert sum(WARM_START_ATTR in t.system_attrs for t in again.study.get_trials()) == 12
    # the journal file itself works as well as its results folder
    cfg = load_study({**new, "warm_start": str(earlier.journal)})
    assert sorted(t.params["x"] for t in warm_trials(cfg)) == sorted(earlier.trials["params_x"])
    # a parameter Optuna cannot mix with this study's (another kind) is left out, not fatal
    other = load_study({**new, "warm_start": str(earlier.journal),
                        "search_space": {"x": {"type": "categorical", "choices": [0, 1]}}})
    assert [t.params for t in warm_trials(other)] == [{}] * 12


def test_callbacks_see_warm_start_history_in_the_study_but_are_not_called_for_it(
    client4, tmp_path
):
    old = {"objective": "sf_objectives:instant", "search_space": SPACE, "name": "history",
           "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": 5}}
    earlier = _run(client4, tmp_path, old)
    calls = []
    new = {**old, "name": "later", "warm_start": str(earlier.journal), "budget": {"n_trials": 3}}
    record = lambda study, trial: calls.append((trial.number, len(study.trials)))  # noqa: E731
    result = _run(client4, tmp_path, new, callbacks=[record])
    assert [n for n, _ in sorted(calls)] == result.trials["number"].tolist() == [5, 6, 7]
    assert all(size >= 6 for _, size in calls)  # the 5 warm trials, then this run's


def test_warm_start_from_a_plain_optuna_sqlite_study_or_journal_names_its_study(client4, tmp_path):
    # the user's studies so far: plain Optuna, in one SQLite file and in one journal file
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    for storage in (url, journal):
        for name, n in (("old", 8), ("other", 3)):
            optuna.create_study(study_name=name, storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=n)).optimize(sf_objectives.instant, n_trials=n)
    old_x = sorted(t.params["x"] for t in optuna.load_study(study_name="old", storage=url).trials)
    new = {"objective": "sf_objectives:instant", "search_space": SPACE, "name": "new",
           "sampler": {"name": "tpe", "seed": 5}, "budget": {"n_trials": 3}, "warm_start_study": "old"}
    for source in (url, str(tmp_path / "optuna.log")):
        cfg = load_study({**new, "warm_start": source})
        assert sorted(t.params["x"] for t in warm_trials(cfg)) == old_x
    result = _run(client4, tmp_path, {**new, "warm_start": url})
    assert sum(WARM_START_ATTR in t.system_attrs for t in result.study.get_trials()) == 8
    assert result.trials["number"].tolist() == [8, 9, 10]
    with pytest.raises(ConfigError) as info:  # which of its studies: the file holds two
        warm_trials(load_study({**new, "warm_start": url, "warm_start_study": None}))
    assert info.value.key == "warm_start_study" and "'old', 'other'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        warm_trials(load_study({**new, "warm_start": url, "warm_start_study": "olde"}))
    assert info.value.key == "warm_start_study" and "'old', 'other'" in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "not a journal", "folder without best.json", "missing sqlite",
                                  "sqlite of something else"])
def test_a_bad_warm_start_fails_naming_the_key_before_any_cluster_starts(
    tmp_path, monkeypatch, kind
):
    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(studyflow.driver._run, "connecting", no_cluster)
    path = tmp_path / "earlier"
    if kind == "not a journal":
        path.write_text("these are not Optuna's records\n")
    elif kind == "folder without best.json":
        path.mkdir()
    elif kind == "sqlite of something else":
        import sqlite3

        with sqlite3.connect(f"{path}.db") as other:
            other.execute("create table t(a)")
    source = f"sqlite:///{path}.db" if "sqlite" in kind else str(path)
    study = {"objective": "sf_objectives:instant", "search_space": SPACE, "warm_start": source}
    with pytest.raises(ConfigError) as info:
        optimize(None, study, results_dir=tmp_path / "results", progress=False)
    assert info.value.key == "warm_start" and str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "results").exists()
    if kind == "missing sqlite":
        assert not list(tmp_path.glob("*.db"))  # not made
    if kind == "sqlite of something else":
        assert "no such table" in str(info.value)  # Optuna's own error says only that a commit failed


def test_enqueue_values_that_cannot_fit_the_space_fail_naming_the_entry():
    space = {"kind": {"type": "categorical", "choices": ["a", "b"]},
             "n": {"type": "int", "low": 1, "high": 5}}
    bad_entries = (({"kind": "c"}, "enqueue.0.kind"), ({"n": 1.5}, "enqueue.0.n"),
                   ({}, "enqueue.0"))
    for bad, key in bad_entries:
        with pytest.raises(ConfigError) as info:
            load_study({"objective": "m:f", "search_space": space, "enqueue": [bad]})
        assert info.value.key == key
    with pytest.raises(ConfigError) as info:  # a mapping where the list of trials belongs
        load_study({"objective": "m:f", "search_space": space, "enqueue": {"kind": "a"}})
    assert info.value.key == "enqueue"
    entry = {"kind": "a", "other": 3}  # a name the space does not declare: the objective's own
    cfg = load_study({"objective": "m:f", "search_space": space, "enqueue": [entry]})
    assert json.dumps(cfg.enqueue) == '[{"kind": "a", "other": 3}]'
    plain = load_study({"objective": "m:f", "search_space": space})
    assert cfg.identity_hash() != plain.identity_hash()


def test_the_first_progress_line_of_a_log_says_the_eta_is_unknown_not_nan(caplog):
    """A Snakemake job's log reads these lines; before any trial ends there is no ETA to give."""
    from studyflow.outputs._progress import Progress

    progress = Progress("s", total=40)  # stderr is not a terminal under pytest: log lines
    with caplog.at_level("INFO", logger="studyflow.progress"):
        progress.update({"complete": 0, "pruned": 0, "failed": 0, "running": 1, "best_value": None, "done": False})
        progress.update({"complete": 4, "pruned": 0, "failed": 0, "running": 1, "best_value": 0.5, "done": False})
    first, second = (r.getMessage() for r in caplog.records)
    assert first == "s: 0/40 trials, best -, 0 failed, 1 running, 0 s elapsed, ETA -", first
    assert "best 0.5" in second and "nan" not in second
