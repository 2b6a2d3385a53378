"""The server's journal: Optuna reads it, and the server's faster answers match Optuna's."""

from __future__ import annotations

import itertools
import time

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from studyflow.journal import ServerJournalStorage
from studyflow.journal import SingleWriterJournal

STATES = [TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]


def _numbers_by_state_query(storage, study_id: int) -> dict[tuple[TrialState, ...], list[int]]:
    """The trial numbers `get_all_trials` gives for every combination of states."""
    return {
        combo: [t.number for t in storage.get_all_trials(study_id, deepcopy=False, states=combo)]
        for k in range(1, len(STATES) + 1)
        for combo in itertools.combinations(STATES, k)
    }


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
