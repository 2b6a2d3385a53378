"""The study server's parts on their own: budget and stop rules, the lease table, ordering.

Each part states its invariants in its docstring; these tests hold each to them with real
Optuna studies in memory, no cluster.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from studyflow.config import load_study
from studyflow.protocol import TrialLease
from studyflow.server import best_of
from studyflow.server._budget import Budget
from studyflow.server._leases import Lease
from studyflow.server._leases import LeaseTable
from studyflow.server._ordering import Ordering
from studyflow.server._ordering import Outcome

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _config(**fields):
    return load_study({"objective": "m:f", "budget": {"n_trials": 10}, **fields})


def test_budget_stops_once_n_trials_finish_and_counts_pruned_as_finished():
    budget = Budget(_config(), n_trials=3)
    budget.count(0, "COMPLETE", [1.0], None)
    budget.count(1, "PRUNED", None, None)
    budget.count(2, "FAIL", None, "ValueError: bad")
    assert not budget.stopped() and budget.finished == 2
    budget.count(3, "COMPLETE", [0.5], None)
    assert budget.stopped() and budget.stop_reason == "n_trials"
    assert (budget.best_value, budget.best_number) == (0.5, 3)


def test_budget_does_not_count_infrastructure_failures_against_max_failures():
    budget = Budget(_config(budget={"n_trials": 10, "max_failures": 1}), n_trials=10)
    for number in range(5):
        budget.count(number, "FAIL", None, "WorkerLost: worker left mid-trial")
    assert not budget.stopped()
    budget.count(5, "FAIL", None, "ValueError: one")
    budget.count(6, "FAIL", None, "ValueError: two")
    assert budget.stopped() and budget.stop_reason == "too many failures: 2 > budget.max_failures=1"


def test_budget_stops_when_the_first_ten_trials_all_fail():
    budget = Budget(_config(), n_trials=100)
    for number in range(10):
        budget.count(number, "FAIL", None, "RuntimeError: broken")
    assert budget.stop_reason == ("too many failures: the first 10 trials all failed "
                                  "(set budget.max_failures to allow more)")


def test_budget_stops_when_more_than_half_fail_naming_the_setting():
    budget = Budget(_config(), n_trials=100)
    for number in range(11):  # 4 complete, then the 7th failure of 11 trials
        budget.count(number, "FAIL" if number % 3 else "COMPLETE", [1.0] if number % 3 == 0 else None,
                     None if number % 3 == 0 else "RuntimeError: broken")
    assert budget.stop_reason == ("too many failures: 7 of 11 trials failed (more than half; "
                                  "set budget.max_failures to allow more)")


def test_budget_patience_counts_trials_without_improvement_and_ignores_infeasible_bests():
    budget = Budget(_config(budget={"n_trials": 100, "patience": 2}), n_trials=100)
    budget.count(0, "COMPLETE", [5.0], None)
    budget.count(1, "COMPLETE", [1.0], None, feasible=False)  # better, but infeasible
    assert budget.best_value == 5.0 and budget.since_improvement == 1
    assert budget.patience_allows(in_flight=0, loops=1)
    budget.count(2, "COMPLETE", [6.0], None)
    assert budget.stop_reason == "patience"
    budget.reopen()
    assert budget.stop_reason is None


def _trials(n: int) -> list[optuna.Trial]:
    study = optuna.create_study()
    return [study.ask() for _ in range(n)]


def test_lease_table_keeps_each_loops_queue_in_order_and_counts_keys():
    t = _trials(3)
    table = LeaseTable()
    assert table.add(Lease(t[0], "k", "w1", 0, "loop-a/1")) is True  # heads its queue: begins now
    assert table.add(Lease(t[1], "k", "w1", 0, "loop-a/1")) is False  # held behind it
    assert table.add(Lease(t[2], "j", "w2", 0, "loop-b/1")) is True
    assert table.leased_keys["k"] == 2 and table.held("loop-a/1") == 2
    assert table.of_worker("w1") == [0, 1] and table.of_task("loop-b") == [2]
    assert table.drop(0).trial is t[0]
    assert table.head("loop-a/1").trial is t[1] and table.leased_keys["k"] == 1
    assert table.drop(0) is None  # a late second drop changes nothing
    table.drop(1)
    assert "loop-a/1" not in table.loop_queues and table.leased_keys["k"] == 0
    assert table.unstarted() == [2]


def test_lease_table_hands_over_a_trial_asked_ahead_only_while_the_loop_holds_it():
    t = _trials(2)
    table = LeaseTable()
    table.add(Lease(t[0], "k", "w", 0, "loop/1"))
    table.add(Lease(t[1], "j", "w", 0, "loop/1"))
    asked = TrialLease(1, {}, "j", 0, None)
    table.ahead["loop/1"] = asked
    assert table.take_ahead("loop/1") is asked
    table.ahead["loop/1"] = asked
    table.drop(1)  # the loop was lost: its held trial went to another loop
    assert table.take_ahead("loop/1") is None and "loop/1" not in table.ahead


@pytest.mark.parametrize("window", [0, 2])
def test_ordering_applies_outcomes_in_trial_order_and_under_a_window_only_when_allowed(window):
    study = optuna.create_study()
    trials = [study.ask() for _ in range(4)]
    ordering = Ordering(study, window)
    in_flight = {0, 1, 2, 3}
    for number in (2, 0):  # trial 2 finishes before trial 0
        in_flight.discard(number)
        ordering.receive(Outcome(trials[number], "COMPLETE", [float(number)]))
        ordering.apply_received(lambda: in_flight)
    told = [t.number for t in study.get_trials(states=(TrialState.COMPLETE,))]
    if window == 0:
        assert told == [0, 2]  # async: at once
        return
    assert told == []  # reproducible: nothing until the ask that may see it
    ordering.apply_received(lambda: in_flight, upto=2)
    assert [t.number for t in study.get_trials(states=(TrialState.COMPLETE,))] == [0]  # 1 still runs
    in_flight.discard(1)
    ordering.receive(Outcome(trials[1], "FAIL", None))
    ordering.apply_received(lambda: in_flight, upto=2)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.COMPLETE, 3: TrialState.RUNNING}


def test_protocol_messages_come_back_from_the_wire_as_they_left():
    from studyflow.protocol import ExchangeRequest
    from studyflow.protocol import Reply
    from studyflow.protocol import TrialOutcome

    outcome = TrialOutcome(3, "COMPLETE", [0.5], {"a": 1}, None, None, 0.01, True, {"constraints:c": -1.0})
    request = ExchangeRequest("loop/1", "tcp://w", [outcome], [4], want=2, worker_id="id", running=3)
    reply = Reply("run", [TrialLease(5, {"x": 0.1}, "k", 7, "/tmp/a", {"x": "{}"}, "2026-12-02T00:00:00")],
                  {"mode": "fixed", "cap": 0}, 1.5)
    for message in (outcome, request, reply):
        wire = message.wire()
        assert all(isinstance(v, (str, int, float, bool, list, dict, type(None))) for v in wire.values())
        assert type(message).from_wire(wire) == message


def test_studies_share_a_clusters_slots_by_water_filling():
    from studyflow.server._shares import water_fill

    assert water_fill(8, {"a": 8, "b": 8}) == {"a": 4, "b": 4}
    assert water_fill(8, {"a": 2, "b": 8}) == {"a": 2, "b": 6}  # what a leaves goes to b
    assert water_fill(2, {"a": 8, "b": 8, "c": 8}) == {"a": 1, "b": 1, "c": 1}  # each makes progress


# --- a served study on its own (a real journal and store, no cluster): who may end a lease ---

def _served(tmp_path, n_trials=10, search_space=None, **fields):
    from studyflow.server._lifecycle import StudySpec
    from studyflow.server._lifecycle import open_study

    space = {"x": {"type": "float", "low": 0, "high": 1}} if search_space is None else search_space
    cfg = _config(search_space=space, sampler={"name": "random", "seed": 3},
                  budget={"n_trials": n_trials, "max_failures": 100}, **({"prefetch": 1} | fields))
    spec = StudySpec("s-1", cfg, str(tmp_path / "journal.log"), str(tmp_path / "store"), "base", concurrency=2)
    return open_study(spec)


def _exchange(served, loop, outcomes=(), dropped=(), want=1):
    from studyflow.protocol import ExchangeRequest

    request = ExchangeRequest(loop, f"tcp://{loop}", list(outcomes), list(dropped), want=want)
    return served.serve([request])[0]


def _complete(number, value):
    from studyflow.protocol import TrialOutcome

    return TrialOutcome(number, "COMPLETE", [value])


def _a_trial_moved_to_another_loop(served):
    """Loop a holds trials 0 (begun) and 1 (held); its worker is lost, so trial 1 goes to loop b."""
    held = _exchange(served, "a/1", want=2).trials
    assert [t.number for t in held] == [0, 1]
    served.lose_leases([0, 1], "WorkerLost: worker a left mid-trial")
    moved = _exchange(served, "b/1").trials
    assert [t.number for t in moved] == [1] and served.leases[1].loop == "b/1"


def test_an_outcome_from_a_loop_that_does_not_hold_the_lease_is_refused_and_logged(tmp_path, caplog):
    served = _served(tmp_path)
    _a_trial_moved_to_another_loop(served)
    with caplog.at_level("WARNING", logger="studyflow.server"):
        _exchange(served, "a/1", outcomes=[_complete(1, 123.0)], want=0)  # the stale loop ran it after all
    assert served.leases[1].loop == "b/1"  # still b's
    assert "refused the outcome of trial 1 from loop a/1: it is leased to loop b/1" in caplog.text
    _exchange(served, "b/1", outcomes=[_complete(1, 0.5)], want=0)
    served.ordering.apply_all()
    assert served.study.trials[1].state == TrialState.COMPLETE and served.study.trials[1].value == 0.5


def test_a_drop_from_a_loop_that_does_not_hold_the_lease_is_refused_and_logged(tmp_path, caplog):
    served = _served(tmp_path)
    _a_trial_moved_to_another_loop(served)
    with caplog.at_level("WARNING", logger="studyflow.server"):
        _exchange(served, "a/1", dropped=[1], want=0)  # the stale loop gives back what it held
    assert served.leases[1].loop == "b/1"  # b still runs it
    assert "refused to drop trial 1 from loop a/1: it is leased to loop b/1" in caplog.text
    _exchange(served, "b/1", outcomes=[_complete(1, 0.5)], want=0)
    served.ordering.apply_all()
    assert served.study.trials[1].state == TrialState.COMPLETE and served.study.trials[1].value == 0.5


def test_a_define_by_run_trial_asked_in_tpes_start_up_and_run_after_it_gets_optunas_multivariate_sample(tmp_path):
    """Trial 10 is handed out while trial 9 (the 10th) still runs, and runs once it has
    finished: like Optuna, whose trials sample their relative parameters at the first suggest,
    it gets the multivariate TPE sample, not the start-up's independent one it would have got
    at its ask."""
    from studyflow.server._lifecycle import StudySpec
    from studyflow.server._lifecycle import open_study

    cfg = _config(search_space={}, sampler={"name": "tpe", "seed": 4}, prefetch=1, budget={"n_trials": 30})
    served = open_study(StudySpec("s-1", cfg, str(tmp_path / "journal.log"), str(tmp_path / "store"), "base",
                                  concurrency=1))
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=4))
    bound = {"low": -10.0, "high": 10.0, "step": None, "log": False}

    def ours(number):
        x, y = (served.suggest(number, "suggest_float", name, bound) for name in "xy")
        return _complete(number, x * x + y * y)

    def theirs(trial):
        x, y = (trial.suggest_float(name, -10, 10) for name in "xy")
        return x * x + y * y

    for number in range(9):
        (lease,) = _exchange(served, "a/1").trials
        _exchange(served, "a/1", outcomes=[ours(lease.number)], want=0)
        trial = plain.ask()
        plain.tell(trial, theirs(trial))
    held = _exchange(served, "a/1", want=2).trials
    assert [t.number for t in held] == [9, 10]
    nine, ten = plain.ask(), plain.ask()
    _exchange(served, "a/1", outcomes=[ours(9)], want=0)
    plain.tell(nine, theirs(nine))
    _exchange(served, "a/1", outcomes=[ours(10)], want=0)
    plain.tell(ten, theirs(ten))
    served.ordering.apply_all()
    assert [t.params for t in served.study.trials[:11]] == [t.params for t in plain.trials]


def test_a_random_search_trial_names_its_worker_in_its_one_record_and_a_trial_answered_from_the_store_names_none(tmp_path):
    """The worker that runs a random-search trial is journaled with the trial's one record when
    it is leased, so its tell writes no record for it; Optuna reads every trial's worker as the
    one that ran it, also for a trial that moved to another loop, and none for a trial that
    no worker ran (answered from the store)."""
    import json

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from studyflow._attrs import CACHED_ATTR
    from studyflow._attrs import WORKER_ATTR
    from studyflow._compat import JournalOperation
    from studyflow.server._lifecycle import StudySpec
    from studyflow.server._lifecycle import open_study

    served = _served(tmp_path)
    _a_trial_moved_to_another_loop(served)  # 0 failed with loop a's worker, 1 went from a to b
    (retry,) = _exchange(served, "b/1", outcomes=[_complete(1, 0.5)]).trials
    (new,) = _exchange(served, "b/1", outcomes=[_complete(retry.number, 0.25)]).trials
    _exchange(served, "b/1", outcomes=[_complete(new.number, 0.75)], want=0)
    assert (retry.number, new.number) == (2, 3)  # 2 retries 0 (enqueued, taken by the ask)
    served.backend.flush()
    journal = tmp_path / "journal.log"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    created = [r for r in records if r["op_code"] == JournalOperation.CREATE_TRIAL]
    worker_records = [(r["trial_id"], r["system_attr"][WORKER_ATTR]) for r in records
                      if r["op_code"] == JournalOperation.SET_TRIAL_SYSTEM_ATTR and WORKER_ATTR in r["system_attr"]]
    assert [r["system_attrs"].get(WORKER_ATTR) for r in created] == ["tcp://a/1", "tcp://a/1", None, "tcp://b/1"]
    # the lost one, the moved one, the retry: none for 3, named in its one record
    assert worker_records == [(0, "tcp://a/1"), (1, "tcp://b/1"), (2, "tcp://b/1")]
    theirs = JournalStorage(JournalFileBackend(str(journal))).get_all_trials(0)
    assert [t.system_attrs.get(WORKER_ATTR) for t in theirs] == ["tcp://a/1", "tcp://b/1", "tcp://b/1", "tcp://b/1"]
    assert [t.state for t in theirs] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3

    # A new journal over the same store and seed draws the same first trials: answered from the
    # store, they name no worker; the first new one names the worker it is leased to.
    cfg = served.config
    again = open_study(StudySpec("s-2", cfg, str(tmp_path / "again.log"), str(tmp_path / "store"), "base",
                                 concurrency=2))
    (lease,) = _exchange(again, "c/1").trials
    again.backend.flush()
    trials = JournalStorage(JournalFileBackend(str(tmp_path / "again.log"))).get_all_trials(0)
    cached = [t for t in trials if t.system_attrs.get(CACHED_ATTR)]
    assert len(cached) == 3 and all(WORKER_ATTR not in t.system_attrs for t in cached)
    assert trials[lease.number].system_attrs[WORKER_ATTR] == "tcp://c/1"


def test_the_trials_one_exchange_finishes_and_leases_carry_the_time_the_server_took_it_up(tmp_path):
    """The server reads the clock once for a batch of exchanges: the outcomes in it arrived
    together, and the trials it leases are leased together. Optuna reads the same times."""
    import datetime

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    served = _served(tmp_path, n_trials=20, prefetch=3)
    first = _exchange(served, "a/1", want=4).trials
    before = datetime.datetime.now()
    second = _exchange(served, "a/1", outcomes=[_complete(t.number, 0.5) for t in first], want=4).trials
    after = datetime.datetime.now()
    assert len(first) == len(second) == 4
    trials = served.study.get_trials(deepcopy=False)
    told = {trials[t.number].datetime_complete for t in first}
    started = {trials[t.number].datetime_start for t in second}
    assert len(told) == 1 and told == started and before <= told.pop() <= after
    assert len({trials[t.number].datetime_start for t in first}) == 1
    served.backend.flush()
    theirs = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))).get_all_trials(0)
    assert [(t.datetime_start, t.datetime_complete) for t in theirs] == [
        (t.datetime_start, t.datetime_complete) for t in trials]


def test_a_define_by_run_trial_is_keyed_once_by_the_parameters_it_suggested(tmp_path):
    """A define-by-run trial's key is known at its tell: it is journaled then, once, as the
    content address of the parameters the objective suggested; a lease moved to another loop
    before it began is keyed the same way."""
    import json

    from studyflow._attrs import KEY_ATTR
    from studyflow._compat import JournalOperation
    from studyflow.store import trial_key

    served = _served(tmp_path, search_space={})
    bound = {"low": 0.0, "high": 1.0, "step": None, "log": False}
    _a_trial_moved_to_another_loop(served)  # 0 failed with loop a's worker, 1 went from a to b
    suggested = {}
    number = 1
    for _ in range(4):
        x = served.suggest(number, "suggest_float", "x", bound)
        suggested[number] = {"x": x}
        reply = _exchange(served, "b/1", outcomes=[_complete(number, x)])
        number = reply.trials[0].number
    served.backend.flush()
    records = [json.loads(line) for line in (tmp_path / "journal.log").read_text().splitlines()]
    keys = [(r["trial_id"], r["system_attr"][KEY_ATTR]) for r in records
            if r["op_code"] == JournalOperation.SET_TRIAL_SYSTEM_ATTR and KEY_ATTR in r["system_attr"]]
    # told on b: 1 (moved from a), 2 (trial 0's retry, taken by the ask), 3, 4; none keyed at the ask
    assert list(suggested) == [1, 2, 3, 4]
    assert keys == [(n, trial_key(served.spec.key_base, p)) for n, p in suggested.items()]
    assert all(served.study.trials[n].system_attrs[KEY_ATTR] == k for n, k in keys)


def test_a_define_by_run_random_trial_names_its_worker_in_its_one_create_record(tmp_path):
    """A define-by-run random-search trial is created in one record naming the worker it is
    leased to (`Study.ask()` draws nothing for it): its tell writes a worker record only for a
    trial that moved to another loop, and Optuna reads every trial's worker as the one that ran it."""
    import json

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from studyflow._attrs import WORKER_ATTR
    from studyflow._compat import JournalOperation

    served = _served(tmp_path, search_space={})
    bound = {"low": 0.0, "high": 1.0, "step": None, "log": False}
    _a_trial_moved_to_another_loop(served)  # 0 failed with loop a's worker, 1 went from a to b
    number = 1
    for _ in range(3):  # 1 (moved from a), 2 (trial 0's retry, taken by the ask), 3
        x = served.suggest(number, "suggest_float", "x", bound)
        number = _exchange(served, "b/1", outcomes=[_complete(number, x)]).trials[0].number
    served.backend.flush()
    journal = tmp_path / "journal.log"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    created = [r.get("system_attrs", {}).get(WORKER_ATTR) for r in records if r["op_code"] == JournalOperation.CREATE_TRIAL]
    worker_records = [(r["trial_id"], r["system_attr"][WORKER_ATTR]) for r in records
                      if r["op_code"] == JournalOperation.SET_TRIAL_SYSTEM_ATTR and WORKER_ATTR in r["system_attr"]]
    assert created == ["tcp://a/1", "tcp://a/1", None, "tcp://b/1", "tcp://b/1"]  # 2 is the enqueued retry
    assert worker_records == [(0, "tcp://a/1"), (1, "tcp://b/1"), (2, "tcp://b/1")]
    theirs = JournalStorage(JournalFileBackend(str(journal))).get_all_trials(0)
    assert [t.system_attrs.get(WORKER_ATTR) for t in theirs[:4]] == ["tcp://a/1"] + ["tcp://b/1"] * 3
    assert [t.state for t in theirs[:4]] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3


def test_a_grid_point_that_waited_for_an_enqueued_twin_which_failed_runs_and_the_grid_then_ends(tmp_path):
    """An enqueued trial at a grid point runs first; the grid's own trial at that point waits
    for it (one key runs once). The enqueued one fails, so the waiting one runs after all, even
    though every point has a trial by then; the study ends ('grid') once it has."""
    from studyflow.protocol import TrialOutcome
    from studyflow.server._lifecycle import StudySpec
    from studyflow.server._lifecycle import open_study

    def failed(number):
        return TrialOutcome(number, "FAIL", None, error="ValueError: no")

    cfg = _config(search_space={"x": {"type": "float", "low": 0, "high": 1, "step": 0.25}},
                  sampler={"name": "grid", "seed": 0}, enqueue=[{"x": 1.0}], budget={"n_trials": 100, "max_failures": 100})
    served = open_study(StudySpec("s-1", cfg, str(tmp_path / "journal.log"), str(tmp_path / "store"), "base",
                                  concurrency=2))
    (enqueued,) = _exchange(served, "a/1").trials
    held = _exchange(served, "b/1").trials
    while served.grid.unstarted_points(served.study) != 0:  # loop b fails each of its trials
        held = _exchange(served, "b/1", outcomes=[failed(t.number) for t in held]).trials
    assert enqueued.params == {"x": 1.0} and len(served.same_key) == 1  # the grid's x = 1.0 waits for it
    (twin,) = _exchange(served, "a/1", outcomes=[failed(enqueued.number)]).trials
    assert twin.params == {"x": 1.0} and twin.number != enqueued.number
    _exchange(served, "b/1", outcomes=[_complete(t.number, 0.0) for t in held], want=0)
    assert not served.status()["done"]
    _exchange(served, "a/1", outcomes=[_complete(twin.number, 1.0)], want=0)
    assert served.status()["done"] and served.stop_reason == "grid"
    assert len(served.study.trials) == 6  # the enqueued one and the grid's 5 points


def test_on_an_adaptive_cluster_a_loop_left_idle_once_every_grid_point_has_a_trial_gives_its_job_back(tmp_path):
    """With failed points, `n_trials` (COMPLETE trials, capped at the grid) is never reached; an
    idle loop of an adaptive cluster is still let go once every point has a trial."""
    from studyflow.protocol import TrialOutcome
    from studyflow.server._lifecycle import StudySpec
    from studyflow.server._lifecycle import open_study

    cfg = _config(search_space={"x": {"type": "float", "low": 0, "high": 1, "step": 0.25}},
                  sampler={"name": "grid", "seed": 0}, prefetch=0, budget={"n_trials": 100, "max_failures": 100})
    spec = StudySpec("s-1", cfg, str(tmp_path / "journal.log"), str(tmp_path / "store"), "base", concurrency=2)
    spec.release_idle = True
    served = open_study(spec)
    (last,) = _exchange(served, "a/1").trials
    held = _exchange(served, "b/1").trials
    while served.grid.unstarted_points(served.study) != 0:  # loop b's trials all fail
        held = _exchange(served, "b/1", outcomes=[TrialOutcome(t.number, "FAIL", None, error="ValueError: no")
                                                  for t in held]).trials
    reply = _exchange(served, "b/1", outcomes=[TrialOutcome(t.number, "FAIL", None, error="ValueError: no")
                                               for t in held])
    assert (reply.status, reply.reason) == ("stop", "budget") and not served.status()["done"]
    _exchange(served, "a/1", outcomes=[_complete(last.number, 0.5)], want=0)
    assert served.status()["done"] and served.stop_reason == "grid"


def test_a_random_search_alone_on_its_cluster_leases_big_batches_and_beside_other_studies_small_ones(tmp_path):
    """Instant random trials come to a loop 257 at a time while the study is alone on its
    cluster (fewer exchanges); once another study is open (its share set), 65 at a time, so the
    other study's exchanges never wait long behind a batch on the server's one thread."""
    served = _served(tmp_path, n_trials=5000, prefetch=None)
    alone = _exchange(served, "a/1", want=1000)
    assert len(alone.trials) == 257 and alone.policy == {"mode": "fill", "cap": 256}
    served.loop_quota = 2  # another study opened: the plugin splits the slots (`_reshare`)
    told = [_complete(t.number, 0.5) for t in alone.trials]
    shared = [_exchange(served, "a/1", outcomes=told, want=1000), _exchange(served, "b/1", want=1000)]
    assert [len(r.trials) for r in shared] == [65, 65]
    assert all(r.policy == {"mode": "fill", "cap": 64} for r in shared)
    served.loop_quota = None  # it closed
    assert len(_exchange(served, "b/1", want=1000).trials) == 257 - 65


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_best_json_names_the_trial_optunas_best_trial_names(direction):
    """Ties go to the first such trial, and a better infeasible trial is passed over, as
    `Study.best_trial` has it (best.json's best is worked out in one pass over the trials)."""
    study = optuna.create_study(direction=direction)
    better = -100.0 if direction == "minimize" else 100.0
    for value, attrs in [(3.0, {}), (1.0, {}), (5.0, {}), (better, {"constraints:0": 0.5}),
                         (1.0, {"constraints:0": -1.0}), (5.0, {}), (None, {})]:
        state = TrialState.FAIL if value is None else TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(state=state, value=value, system_attrs=attrs))
    best = best_of(study)
    assert best["best_number"] == study.best_trial.number == (1 if direction == "minimize" else 2)
    assert (best["best_values"], best["best_params"]) == (study.best_trial.values, study.best_trial.params)
    assert best_of(study, study.get_trials(deepcopy=False)) == best
