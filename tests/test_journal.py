"""The server's journal: Optuna reads it, and the server's faster answers match Optuna's."""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from datetime import timezone

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from studyflow.optuna_ext import RandomInOneRecord
from studyflow.optuna_ext import ServerJournalStorage
from studyflow.optuna_ext import SingleWriterJournal

STATES = [TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]


def _numbers_by_state_query(storage, study_id: int) -> dict[tuple[TrialState, ...] | None, list[int]]:
    """The trial numbers `get_all_trials` gives for every combination of states, and for all."""
    combos = [combo for k in range(1, len(STATES) + 1) for combo in itertools.combinations(STATES, k)]
    return {combo: [t.number for t in storage.get_all_trials(study_id, deepcopy=False, states=combo)]
            for combo in [None, *combos]}


def _play(study: optuna.Study, rounds: int) -> None:
    """Trials finishing out of order in every state, enqueued retries, some left running."""
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for r in range(rounds):
        held = [study.ask(space) for _ in range(4)]
        study.enqueue_trial({"x": 0.5})
        for trial, state in zip(reversed(held), ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]):
            study.tell(trial, trial.params["x"] if state == "COMPLETE" else None, state=TrialState[state])
        study.ask(space)  # pops the enqueued trial and leaves it running
        study.tell(study.ask(space), float(r))


def test_server_journal_answers_state_queries_as_optuna_reads_the_same_file(tmp_path):
    path = tmp_path / "journal.log"
    served = optuna.create_study(storage=ServerJournalStorage(SingleWriterJournal(path)), study_name="s",
                                 sampler=optuna.samplers.RandomSampler(seed=1))
    study_id = served._study_id
    _play(served, 3)
    _numbers_by_state_query(served._storage, study_id)  # index built mid-study, then kept up to date
    _play(served, 3)
    served._storage._backend.flush()
    ours = _numbers_by_state_query(served._storage, study_id)
    optunas = _numbers_by_state_query(JournalStorage(JournalFileBackend(str(path))), 0)
    assert ours == optunas
    assert ours[(TrialState.WAITING,)] == [] and len(ours[(TrialState.RUNNING,)]) == 6
    assert len(ours[(TrialState.COMPLETE, TrialState.PRUNED)]) == 6 * 4  # 3 of each round's 4 + 1

    # Reopened (a resume): the index is built from the replayed file, then follows new changes.
    served._storage._backend.close()
    reopened = optuna.load_study(storage=ServerJournalStorage(SingleWriterJournal(path)), study_name="s",
                                 sampler=optuna.samplers.RandomSampler(seed=2))
    for trial in reopened.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reopened.tell(trial.number, state=TrialState.FAIL)
    _play(reopened, 2)
    reopened._storage._backend.flush()
    assert _numbers_by_state_query(reopened._storage, 0) == _numbers_by_state_query(
        JournalStorage(JournalFileBackend(str(path))), 0)

    # A second study in the same journal: each study's answers hold its own trials only
    other = optuna.create_study(storage=reopened._storage, study_name="other",
                                sampler=optuna.samplers.RandomSampler(seed=3))
    _play(other, 1)
    _play(reopened, 1)
    reopened._storage._backend.flush()
    optunas = JournalStorage(JournalFileBackend(str(path)))
    for study_id in (0, other._study_id):
        assert _numbers_by_state_query(reopened._storage, study_id) == _numbers_by_state_query(optunas, study_id)


def test_waiting_trials_are_found_as_optuna_finds_them_while_retries_come_and_go(tmp_path):
    # `Study.ask` asks for the WAITING trials on every ask (the server's asks): answered from
    # the trials known to wait, not the state index; checked after every step against Optuna
    # reading the same file, fresh and resumed.
    path = tmp_path / "journal.log"
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def waiting(storage, study_id: int = 0) -> list[int]:
        return [t.number for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))]

    def same_as_optunas(study: optuna.Study) -> list[int]:
        study._storage._backend.flush()
        ours = waiting(study._storage)
        assert ours == waiting(JournalStorage(JournalFileBackend(str(path))))
        return ours

    served = optuna.create_study(storage=ServerJournalStorage(SingleWriterJournal(path)), study_name="s",
                                 sampler=optuna.samplers.RandomSampler(seed=1))
    assert same_as_optunas(served) == []  # first use, before any trial
    held = [served.ask(space) for _ in range(3)]
    served.enqueue_trial({"x": 0.25})
    served.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {"x": 0.9}}))
    assert same_as_optunas(served) == [3, 4]
    assert served.ask(space).params == {"x": 0.25}  # takes the first
    assert same_as_optunas(served) == [4]
    served.tell(held[0], 0.5)
    served.enqueue_trial({"x": 0.75})
    assert same_as_optunas(served) == [4, 5]
    served._storage._backend.close()

    resumed = optuna.load_study(storage=ServerJournalStorage(SingleWriterJournal(path)), study_name="s",
                                sampler=optuna.samplers.RandomSampler(seed=2))
    assert same_as_optunas(resumed) == [4, 5]  # found by the first use's scan of the replayed file
    assert resumed.ask(space).params == {"x": 0.9}
    resumed.enqueue_trial({"x": 0.5})
    assert same_as_optunas(resumed) == [5, 6]
    resumed.ask(space), resumed.ask(space)
    assert same_as_optunas(resumed) == []
    resumed.ask(space)  # none left: a new trial
    assert same_as_optunas(resumed) == []
    assert [t.state for t in resumed.trials].count(TrialState.WAITING) == 0


def test_a_journal_whose_disk_refuses_fsync_says_so_at_the_next_batch_instead_of_going_on():
    # /dev/null takes every write and refuses fsync (EINVAL): the fsync fails on its thread,
    # after the batch's records were handed to the OS and the batch's replies could leave
    journal = SingleWriterJournal("/dev/null")
    record = {"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}
    journal.append_logs([record])
    journal.sync_soon()
    deadline = time.monotonic() + 10
    with pytest.raises(OSError, match="fsync failed"):
        while time.monotonic() < deadline:
            journal.append_logs([record])
            journal.sync_soon()  # a later batch: raises once the failure is known
            time.sleep(0.01)
    with pytest.raises(OSError):
        journal.close()  # closing fsyncs once more, and fails the same way


def test_random_search_trials_made_in_one_record_are_the_trials_study_ask_would_make(tmp_path):
    # Every kind of parameter the study file offers: log, step, int, log int, categorical
    space = {
        "x": optuna.distributions.FloatDistribution(-1, 1),
        "lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True),
        "s": optuna.distributions.FloatDistribution(0, 1, step=0.1),
        "n": optuna.distributions.IntDistribution(1, 9),
        "m": optuna.distributions.IntDistribution(2, 64, log=True),
        "kind": optuna.distributions.CategoricalDistribution(["a", "b", None]),
    }
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    expected = [plain.ask(space).params for _ in range(200)]

    path = tmp_path / "journal.log"
    served = optuna.create_study(storage=ServerJournalStorage(SingleWriterJournal(path)), study_name="s",
                                 sampler=optuna.samplers.RandomSampler(seed=7))
    assert RandomInOneRecord.applies(served, space)
    maker = RandomInOneRecord(served, space)
    served._storage._backend.flush()
    records = len(path.read_bytes().splitlines())
    trials = [maker.create(maker.sample(), {"key": i}) for i in range(200)]
    served._storage._backend.flush()
    assert len(path.read_bytes().splitlines()) - records == 200  # one record each
    assert [t.params for t in trials] == expected

    theirs = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path)))).trials
    assert [t.params for t in theirs] == expected
    assert [t.system_attrs for t in theirs] == [{"key": i} for i in range(200)]
    assert {t.state for t in theirs} == {TrialState.RUNNING}
    # Small spaces draw one number at a time: still the numbers Study.ask draws
    for small in ({"x": space["x"]}, {"lr": space["lr"], "m": space["m"]}, {"kind": space["kind"]},
                  {"s": space["s"], "n": space["n"], "x": space["x"]}):
        plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        ours = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        maker = RandomInOneRecord(ours, small)
        assert [maker.sample() for _ in range(300)] == [plain.ask(small).params for _ in range(300)]
    # Not for samplers that look at trials, nor where Optuna draws nothing (one-valued ranges)
    assert not RandomInOneRecord.applies(optuna.create_study(sampler=optuna.samplers.TPESampler()), space)
    assert not RandomInOneRecord.applies(served, space | {"c": optuna.distributions.IntDistribution(3, 3)})


def _story(study: optuna.Study) -> None:
    """Every write the server makes, and the rest of Optuna's: asks, tells in every state,
    enqueued and added trials, user and system attributes, reports, define-by-run suggests."""
    _play(study, 2)
    trial = study.ask()
    trial.suggest_int("n", 1, 9)
    trial.suggest_categorical("kind", ["a", "b", None])
    trial.set_user_attr("note", {"a": [1, 2]})
    study._storage.set_trial_system_attr(trial._trial_id, "studyflow:worker", "tcp://w")
    trial.report(0.5, 1)
    study.tell(trial, 1.0)
    study.add_trial(optuna.trial.create_trial(params={"x": 0.3}, value=0.3, user_attrs={"u": 1},
                                              system_attrs={"s": 2},
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                                              intermediate_values={1: 0.1}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {"x": 0.9}}))
    study.tell(study.ask(), state=TrialState.FAIL)


def _records(path) -> list[dict]:
    """The journal's records, without what differs between two runs (times, thread ids)."""
    import json

    masked = ("worker_id", "datetime_start", "datetime_complete")
    return [{k: ("..." if k in masked and v is not None else v) for k, v in json.loads(line).items()}
            for line in path.read_text().splitlines()]


@pytest.fixture
def not_utc(monkeypatch):
    """A local time zone that is not UTC (the journal's), as on most users' machines."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_server_journal_writes_optunas_records_and_holds_the_trials_optuna_replays(tmp_path, not_utc):
    """The server applies its own writes instead of replaying them: the file must be what
    Optuna writes, and its trials what Optuna reads back, to the microsecond."""
    theirs_path, ours_path = tmp_path / "optuna.log", tmp_path / "server.log"
    theirs = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(theirs_path))), study_name="s",
                                 sampler=optuna.samplers.RandomSampler(seed=5))
    ours = optuna.create_study(storage=ServerJournalStorage(SingleWriterJournal(ours_path)), study_name="s",
                               sampler=optuna.samplers.RandomSampler(seed=5))
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for study in (theirs, ours):
        _story(study)
        two = optuna.create_study(storage=study._storage, study_name="two", directions=["minimize", "maximize"],
                                  sampler=optuna.samplers.RandomSampler(seed=6))
        two.tell(two.ask(space), [1.0, 2.0])
        two.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=space, values=[3.0, 4.0]))
    # a one-record random trial as the server makes it (`create_running_trial`), and as Optuna
    # makes the same trial from a template (`create_new_trial`, as `Study.add_trial` calls it)
    maker = RandomInOneRecord(ours, space)
    ours.tell(maker.create(maker.sample(), {"key": "k"}), 0.25)
    template = optuna.trial.FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(timezone.utc),
        datetime_complete=None, params=RandomInOneRecord(theirs, space).sample(), distributions=space,
        user_attrs={}, system_attrs={"key": "k"}, intermediate_values={}, trial_id=-1)
    theirs.tell(optuna.Trial(theirs, theirs._storage.create_new_trial(theirs._study_id, template_trial=template)), 0.25)
    ours._storage._backend.flush()

    assert _records(ours_path) == _records(theirs_path)
    replayed = JournalStorage(JournalFileBackend(str(ours_path)))
    for study_id in (0, 1):
        held = ours._storage.get_all_trials(study_id, deepcopy=False)
        assert held == replayed.get_all_trials(study_id) and len(held) > 1
        for state in (None, *TrialState):
            assert ours._storage.get_n_trials(study_id, state) == replayed.get_n_trials(study_id, state)
    assert [t.state for t in ours.trials] == [t.state for t in theirs.trials]

    # A write Optuna's replay refuses raises the same error, and writes nothing
    finished = ours.trials[-1]
    size = ours_path.stat().st_size
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        ours._storage.set_trial_system_attr(finished._trial_id, "late", 1)
    with pytest.raises(KeyError):
        ours._storage.set_trial_user_attr(10_000, "nobody", 1)
    asked = ours.ask()._trial_id
    with pytest.raises(TypeError):  # not JSON: refused before the trial changes
        ours._storage.set_trial_user_attr(asked, "bad", object())
    with pytest.raises(ValueError, match="different distribution kind"):  # "n" is an int in earlier trials
        ours._storage.set_trial_param(asked, "n", 0.5, optuna.distributions.FloatDistribution(0, 1))
    ours._storage._backend.flush()
    assert "bad" not in ours.trials[-1].user_attrs and "n" not in ours.trials[-1].params
    assert len(_records(ours_path)) == len(_records(theirs_path)) + 1  # the ask only
    assert ours_path.stat().st_size > size


@pytest.mark.parametrize("options", [{}, {"sort_keys": True, "default": str},
                                     {"separators": (", ", ": "), "sort_keys": True, "default": str}])
def test_the_reused_encoder_writes_the_text_json_dumps_writes(options):
    """The journal, the store and trial keys encode with one reused C encoder (`_json`): the
    same text as `json.dumps` for what they hold: enums, numpy scalars, NaN and infinities,
    unicode, nesting, and (with a default) objects JSON has no type for."""
    import json

    import numpy as np

    from studyflow._json import reused_encoder

    encode = reused_encoder(**options)
    assert encode.__qualname__ == "reused_encoder.<locals>.encode"  # the fast path, on this Python
    values = [
        {"op_code": optuna.storages.journal._storage.JournalOperation.CREATE_TRIAL, "state": TrialState.COMPLETE,
         "values": [0.1, float("nan"), float("inf"), -float("inf"), np.float64(2.5)], "n": np.int64(3) if options else 3,
         "params": {"é": "q\"\\\n", "b": [True, False, None]}, "nested": {"z": {"y": [], "x": {}}}},
        "text", 1.5, [],
    ]
    if options.get("default"):
        values.append({"when": time.gmtime(0), "obj": object.__new__(object), "path": __import__("pathlib").Path("/a")})
    for value in values:
        expected = json.dumps(value, separators=options.get("separators", (",", ":")),
                              sort_keys=options.get("sort_keys", False), default=options.get("default"))
        assert encode(value) == expected
