"""The trial loop: one long-lived Dask task per worker slot running trials the server leases.

A loop keeps at most one exchange with the study server in flight: it carries every outcome
finished since the last one and asks for the next trials. While it is in flight the loop runs
the trials it holds, so the round trip hides behind a running trial, and trials shorter than a
round trip travel in batches. How many trials a loop holds beyond the one it runs follows the
server's prefetch policy (`server._prefetch.prefetch_policy`). The loop returns when the server
says stop.
"""

from __future__ import annotations

import io
import math
import os
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from concurrent.futures import Future
from functools import lru_cache
from typing import Any

import optuna

from studyflow._trail import TrailWriter
from studyflow.protocol import INTERRUPTED
from studyflow.protocol import ExchangeRequest
from studyflow.protocol import Reply
from studyflow.protocol import TrialLease
from studyflow.protocol import TrialOutcome
from studyflow.protocol import json_attrs
from studyflow.worker._held import held_values
from studyflow.worker._interrupt import interrupted_since
from studyflow.worker._objective import add_search_paths
from studyflow.worker._threads import use_trial_threads
from studyflow.worker._objective import bind
from studyflow.worker._objective import import_objective
from studyflow.worker._reaper import closing
from studyflow.worker._reaper import watch_children
from studyflow.worker._script_main import Script
from studyflow.worker._script_main import adopt_script
from studyflow.worker._stop_push import stop_heard_by
from studyflow.worker._trial import RemoteTrial
from studyflow.worker._trial import ServerConnection
from studyflow.worker._trial import check_result


@lru_cache(maxsize=4)
def _read_parquet(path: str, mtime_ns: int) -> Any:
    import pandas as pd  # here: a study without data never loads it (nor does the forkserver)

    return pd.read_parquet(path)


def load_data(data: Any) -> Any:
    """A staged parquet path is read once per worker process; anything else is used as is."""
    if isinstance(data, str) and data.endswith(".parquet"):
        return _read_parquet(data, os.stat(data).st_mtime_ns)
    return data


class Pace:
    """Running estimates of a trial's and a round trip's duration, and the prefetch they call for."""

    WEIGHT = 0.2  # of the newest measurement in the moving averages
    ADAPTIVE_MIN_RT_SHARE = 0.05  # a learning sampler's loop holds a trial from this round trip/trial

    def __init__(self) -> None:
        self.trial_s: float | None = None
        self.round_trip_s: float | None = None

    def add_trial(self, seconds: float) -> None:
        self.trial_s = self._averaged(self.trial_s, seconds)

    def add_round_trip(self, seconds: float) -> None:
        self.round_trip_s = self._averaged(self.round_trip_s, seconds)

    @classmethod
    def _averaged(cls, average: float | None, seconds: float) -> float:
        return seconds if average is None else average + cls.WEIGHT * (seconds - average)

    def hold(self, policy: dict[str, Any]) -> int:
        """Trials to hold beyond the running one."""
        cap = int(policy.get("cap", 0))
        mode = policy.get("mode", "fixed")
        if mode == "fixed" or cap == 0:
            return cap
        trial, rt = self.trial_s, self.round_trip_s
        if mode == "fill":  # history-free sampler: cover a round trip, at least one ahead
            if not trial or not rt:
                return 1
            if trial < rt:  # shorter than a round trip: full batches, fewer exchanges
                return cap
            return max(1, min(cap, math.ceil(2 * rt / trial)))
        # adaptive: one ahead while the round trip is 5% to 400% of a trial: waiting for it would
        # cost the loop at least ~5% of its time, and trials are not so short that sampling
        # blind buys little beyond what batching already gives (see prefetch_policy)
        if trial is None or rt is None:
            return 0
        return cap if self.ADAPTIVE_MIN_RT_SHARE * trial <= rt <= 4 * trial else 0

    def ask_ahead(self, policy: dict[str, Any]) -> bool:
        """Whether the server should sample this loop's next trial while the reply travels:
        a learning sampler's trials shorter than a quarter of a round trip. Holding one would
        not help (the loop would finish it long before the reply), but the sampler working
        during the round trip instead of after it takes the sampling off the loop's path."""
        if policy.get("mode") != "adaptive" or not policy.get("cap"):
            return False
        trial, rt = self.trial_s, self.round_trip_s
        return trial is not None and rt is not None and rt > 4 * trial


class Courier:
    """Carries a loop's outcomes to the study server and its next trials back.

    At most one exchange is in flight. The next one leaves from the worker's event loop the
    moment the previous one returns, carrying every outcome finished meanwhile, so an outcome
    never waits behind a trial that hangs (its timeout would otherwise hit the wrong trial).
    """

    def __init__(self, conn: ServerConnection, loop_id: str, pace: Pace) -> None:
        self._conn, self._loop_id, self._pace = conn, loop_id, pace
        self._cond = threading.Condition()  # re-entrant: a reply may land while sending
        self._queue: deque[TrialLease] = deque()  # leased trials, in the order to run them
        self._outbox: list[TrialOutcome] = []  # outcomes not yet sent
        self._in_flight = False
        self._sent_at = 0.0
        self._current: int | None = None  # the trial the loop runs now
        self._starved = False  # the last reply brought no trial: ask again after this trial
        self._policy: dict[str, Any] = {}
        self._ends_at: float | None = None  # budget.timeout_s on this clock: start nothing after
        self._stopped = False
        self._error: BaseException | None = None
        self._sending = 0  # outcomes in the exchange in flight
        self.answered = 0  # outcomes the server has answered, in the order they were put
        self.trails: str | None = None  # the server's folder for the loop's trail (`_trail`)

    def next_trial(self) -> TrialLease | None:
        """The next trial to run; None once the server says stop."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._stopped:
                    return None
                if self._runnable():
                    lease = self._queue.popleft()
                    self._current = lease.number
                    return lease
                self._maybe_send()
                self._cond.wait(timeout=1.0)

    def stop_pushed(self) -> None:
        """The server pushed a stop (`_stop_push`): start nothing more."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def put(self, outcome: TrialOutcome) -> None:
        with self._cond:
            self._current, self._starved = None, False
            self._outbox.append(outcome)
            self._maybe_send()

    def finish(self) -> None:
        """After stop: send what is left, and give back the trials held but not run."""
        with self._cond:
            outbox, self._outbox = self._outbox, []
            dropped = [t.number for t in self._queue]
            self._queue.clear()
        if outbox or dropped:
            request = ExchangeRequest(self._loop_id, self._conn.address, outbox, dropped, want=0)
            self._conn.call("exchange", request=request.wire())

    def _runnable(self) -> bool:
        return bool(self._queue) and (self._ends_at is None or time.monotonic() < self._ends_at)

    def _maybe_send(self) -> None:
        if self._in_flight or self._stopped or self._error is not None:
            return
        want = max(0, self._pace.hold(self._policy) + 1 - len(self._queue))
        if not (self._outbox or want or not self._runnable()):
            return
        busy = self._current is not None
        if busy and self._starved and not self._outbox:
            return  # nothing to lease just now: ask again when this trial ends
        outcomes, self._outbox = self._outbox, []
        self._in_flight, self._sent_at, self._sending = True, time.perf_counter(), len(outcomes)
        # What runs now; right after an outcome, the trial about to start (so its timeout
        # clock starts on the server).
        running = self._current if self._current is not None else (
            self._queue[0].number if self._runnable() else None)
        request = ExchangeRequest(self._loop_id, self._conn.address, outcomes, want=want,
                                  worker_id=self._conn.worker.id, running=running,
                                  ahead=self._pace.ask_ahead(self._policy),
                                  # only an idle loop waits at the server: a busy one must be
                                  # free to send its outcome the moment its trial ends
                                  wait_s=0.0 if self._queue or busy else 1.0)
        future = self._conn.submit("exchange", request=request.wire())
        future.add_done_callback(self._on_reply)

    def _on_reply(self, future: Future) -> None:
        with self._cond:
            self._in_flight = False
            try:
                reply = Reply.from_wire(future.result())
            except BaseException as exc:  # the scheduler or the study is gone: the loop ends
                self._error = exc
                self._cond.notify_all()
                return
            self.answered += self._sending
            self._pace.add_round_trip(time.perf_counter() - self._sent_at - reply.parked_s)
            self.trails = self.trails or reply.trails
            if reply.policy is not None:
                self._policy = reply.policy
            if reply.ends_in is not None:
                self._ends_at = time.monotonic() + reply.ends_in
            self._queue.extend(reply.trials)
            self._starved = not reply.trials
            self._stopped = self._stopped or reply.status == "stop"  # a pushed stop stays
            self._maybe_send()
            self._cond.notify_all()


def run_trial_loop(
    study_id: str,
    objective: Any,
    data: Any,
    objective_args: dict[str, Any],
    n_objectives: int,
    sys_paths: list[str],
    script: Script | None = None,
) -> int:
    """Run trials until the server says stop; return how many this loop ran. `objective` and
    `data` may be `Held` by the server. `script`: the driver's script, where the objective is
    made of its functions (`script_of`)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    add_search_paths(sys_paths)
    conn = ServerConnection(study_id)
    with held_values(conn, objective, data) as (objective, data):
        return _run_trials(conn, objective, data, objective_args, n_objectives, script)


def _run_trials(conn: ServerConnection, objective: Any, data: Any, objective_args: dict[str, Any],
                n_objectives: int, script: Script | None) -> int:
    fn = import_objective(objective) if isinstance(objective, str) else objective
    adopt_script(fn, script)  # its file in tracebacks; its helpers where pools' processes look for them
    call = bind(fn, objective_args, has_data=data is not None)
    data = load_data(data)
    use_trial_threads()  # after the objective's imports: PyTorch's pool too
    watch_children(conn.worker)  # the programs its trials start end with the worker
    _line_buffered_output()
    # The task key (the driver names a dead loop by it) and this run of it: Dask may run the
    # task again elsewhere while the old run still hangs in a worker that is shutting down.
    loop_id = f"{conn.worker.get_current_task()}/{uuid.uuid4().hex[:8]}"
    pace = Pace()
    courier = Courier(conn, loop_id, pace)
    trail = TrailWriter()  # what the server reads if this worker dies
    ran, began = 0, time.monotonic()
    try:
        with stop_heard_by(conn.worker, conn.study_id, courier.stop_pushed):
            while (lease := courier.next_trial()) is not None:
                # A closing worker (the reaper may just have freed a hung trial's thread) or a
                # Ctrl-C (the driver is stopping the study) begins nothing more: the trail has
                # the held trials unbegun, and the server gives them to other loops.
                if closing(conn.worker) or interrupted_since(began):
                    trail.close(remove=False)
                    return ran
                trail.open(courier.trails, loop_id)
                trail.began(lease.number, courier.answered)
                outcome = _run_trial(conn, call, lease, data, objective_args, n_objectives)
                pace.add_trial(outcome.duration_s)
                trail.finished(outcome.wire())
                courier.put(outcome)
                ran += 1
        courier.finish()
    except BaseException:
        trail.close(remove=False)  # for the server, which reads it when it releases the loop
        raise
    trail.close()
    return ran


def _line_buffered_output() -> None:
    """A worker's stdout and stderr write each line as it is printed, as on a terminal: a
    worker's are a file or a pipe (the job's log), block-buffered, so a long trial's progress
    showed only when it ended; and one write a line keeps two workers' lines apart in the log."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:
            stream.reconfigure(line_buffering=True, write_through=False)


def _flush_output() -> None:
    """What the objective printed without an end of line goes out with its trial too."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed, or a full disk: the trial's outcome still counts
            pass


def _run_trial(conn: ServerConnection, call: Any, lease: TrialLease, data: Any,
               objective_args: dict[str, Any], n_objectives: int) -> TrialOutcome:
    """Run one leased trial; its outcome, whatever the objective did."""
    trial = RemoteTrial(conn, lease.number, lease.params, data, objective_args, lease.key, lease.seed,
                        lease.artifact_dir, lease.distributions, lease.datetime_start, lease.relative,
                        lease.relative_distributions)
    state, values, error, tb = "COMPLETE", None, None, None
    started, began = time.perf_counter(), time.monotonic()
    try:
        values, error = check_result(call(trial, data), n_objectives)
        if error:
            state = "FAIL"
    except optuna.TrialPruned:
        state = "PRUNED"
    except (Exception, SystemExit) as exc:  # sys.exit in an objective (a script's error path) fails its trial
        state, error, tb = "FAIL", f"{type(exc).__name__}: {exc}", traceback.format_exc()
    _flush_output()
    user_attrs, unrecordable = json_attrs(trial.user_attrs)
    system_attrs, unrecordable_system = json_attrs(trial.recorded_system_attrs, "system attr")
    unrecordable = unrecordable or unrecordable_system
    if unrecordable and state != "FAIL":
        state, values, error = "FAIL", None, unrecordable
    if interrupted_since(began):  # the programs it waited for got the Ctrl-C too: re-run
        state, values, error, tb = INTERRUPTED, None, None, None
    return TrialOutcome(trial.number, state, values, user_attrs, error, tb,
                        time.perf_counter() - started, trial.used_artifact_dir, system_attrs, trial.suggested)
