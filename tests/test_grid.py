"""A grid search proposes plain Optuna's GridSampler trials, and stops where it stops.

`IncrementalGridSampler` keeps the visited grid points as trials finish instead of reading every
trial on every tell. A quant's grid of cheap backtests is told thousands of times: the same seed
must still give the same points in the same order, through asks ahead of tells, failures,
trials finished outside a tell, enqueued trials and re-evaluations past the grid's end.
"""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.trial import TrialState

from studyflow._compat import storage_of
from studyflow._compat import tell
from studyflow._compat import trial_id_of
from studyflow.optuna_ext import IncrementalGridSampler
from studyflow.optuna_ext import ServerJournalStorage
from studyflow.optuna_ext import SingleWriterJournal

SPACE = {"x": list(range(6)), "y": [0.1, 0.2, 0.3], "kind": ["a", "b"]}  # 36 points
DISTRIBUTIONS = {"x": optuna.distributions.IntDistribution(0, 5),
                 "y": optuna.distributions.CategoricalDistribution([0.1, 0.2, 0.3]),
                 "kind": optuna.distributions.CategoricalDistribution(["a", "b"])}


def _story(study: optuna.Study, schedule: random.Random, n_trials: int) -> list[tuple]:
    """Asks up to 7 ahead of their tells, tells them in any order (some FAIL, one finished by a
    storage write, not a tell), enqueues a trial, and goes past the grid's end; returns what
    each ask got and whether each tell stopped the study."""
    seen, running = [], []
    study.enqueue_trial({"x": 2, "y": 0.2, "kind": "b"})
    for _ in range(n_trials):
        while len(running) >= schedule.randint(1, 7):
            trial = running.pop(schedule.randrange(len(running)))
            study._stop_flag = False
            if trial.number == 11:  # a server settling an orphaned ask: no tell, no after_trial
                storage_of(study).set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
                continue
            if schedule.random() < 0.15:
                tell(study, trial, state=TrialState.FAIL)
            else:
                tell(study, trial, [trial.params["x"] * trial.params["y"]])
            seen.append(("told", trial.number, study._stop_flag))
        trial = study.ask(DISTRIBUTIONS)
        grid_id = storage_of(study).get_trial_system_attrs(trial_id_of(trial)).get("grid_id")
        seen.append(("asked", trial.number, trial.params, grid_id))
        running.append(trial)
    for trial in running:
        study._stop_flag = False
        tell(study, trial, [0.0])
        seen.append(("told", trial.number, study._stop_flag))
    return seen


@pytest.mark.parametrize("storage", ["in memory", "server journal"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_grid_search_gives_plain_optunas_trials_and_stops_where_it_stops(tmp_path, storage, seed):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stories = []
    for name, sampler in (("plain", optuna.samplers.GridSampler(SPACE, seed=seed)),
                          ("ours", IncrementalGridSampler(SPACE, seed=seed))):
        store = ServerJournalStorage(SingleWriterJournal(tmp_path / f"{name}.log")) if storage != "in memory" else None
        study = optuna.create_study(storage=store, sampler=sampler)
        stories.append(_story(study, random.Random(seed), n_trials=44))  # 8 past the grid
    plain, ours = stories
    assert ours == plain
    points = [(p["x"], p["y"], p["kind"]) for what, _, p, *_ in (s for s in plain if s[0] == "asked")]
    assert len(set(points)) == 36  # every point, some twice (the enqueued one, past the end)
    assert any(s[0] == "told" and s[2] for s in plain)  # the story reaches Optuna's stops


def test_a_trial_of_another_grid_told_last_stops_the_study_as_optuna_does():
    """Optuna stops a study when the one point left is the told trial's own grid id, even for a
    trial whose search space is another grid's (not counted as running here): the running
    trials' points must count, or the grid is taken for unfinished."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = {"x": [0, 1, 2]}
    stops = []
    for sampler in (optuna.samplers.GridSampler(space, seed=0), IncrementalGridSampler(space, seed=0)):
        study = optuna.create_study(sampler=sampler)
        trials = [study.ask({"x": optuna.distributions.IntDistribution(0, 2)}) for _ in range(3)]
        storage_of(study).set_trial_system_attr(trial_id_of(trials[2]), "search_space", {"x": [5, 6, 7]})
        tell(study, trials[0], [0.0])
        tell(study, trials[2], [0.0])  # points: 0 visited, 1 running, 2 this trial's (another grid)
        stops.append(study._stop_flag)
    assert stops == [True, True]


def test_grid_trials_made_in_one_record_are_the_trials_study_ask_would_make(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from studyflow.optuna_ext import GridInOneRecord

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plain = optuna.create_study(sampler=optuna.samplers.GridSampler(SPACE, seed=4))
    asked = [plain.ask(DISTRIBUTIONS) for _ in range(36)]
    expected = [(t.params, storage_of(plain).get_trial_system_attrs(trial_id_of(t))) for t in asked]

    path = tmp_path / "journal.log"
    served = optuna.create_study(storage=ServerJournalStorage(SingleWriterJournal(path)), study_name="s",
                                 sampler=IncrementalGridSampler(SPACE, seed=4))
    assert GridInOneRecord.applies(served, DISTRIBUTIONS)
    maker = GridInOneRecord(served, DISTRIBUTIONS)
    served._storage._backend.flush()
    records = len(path.read_bytes().splitlines())
    made = [maker.create(maker.sample(), {"key": i}) for i in range(36)]
    assert maker.sample() is None  # past the grid's first pass, `Study.ask` draws the point
    served._storage._backend.flush()
    assert len(path.read_bytes().splitlines()) - records == 36  # one record each
    theirs = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path)))).trials
    assert [(t.params, t.system_attrs) for t in theirs] == [
        (params, {**attrs, "key": i}) for i, (params, attrs) in enumerate(expected)]
    assert [list(t.params) for t in theirs] == [list(DISTRIBUTIONS)] * 36  # suggested in the space's order
    assert [t.distributions for t in theirs] == [DISTRIBUTIONS] * 36 and [t.number for t in made] == list(range(36))
    # Only for our grid sampler over exactly its names
    assert not GridInOneRecord.applies(plain, DISTRIBUTIONS)
    assert not GridInOneRecord.applies(served, {"x": DISTRIBUTIONS["x"]})
