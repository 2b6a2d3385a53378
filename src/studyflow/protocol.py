"""The messages between the study server and its trial loops, used by both ends.

A loop sends an `ExchangeRequest` (the outcomes it finished, the trials it gives back, how many
it wants) to the scheduler handler `studyflow_exchange`; the server answers with a `Reply`
holding `TrialLease`s. Over the scheduler's RPC they travel as plain dicts (msgpack): each is
turned into one by `wire()` on the sending side and read back by `from_wire()` on the
receiving one, and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import ClassVar

# Reply.status: "run" (trials leased), "ok" (nothing wanted), "wait" (none leasable yet: ask
# again), "stop" (the study is over: the loop returns)
STATUSES = ("run", "ok", "wait", "stop")
# what a loop may ask the server to suggest (`studyflow_suggest`, `TrialOutcome.suggested`)
SUGGEST_METHODS = ("suggest_float", "suggest_int", "suggest_categorical")
# the op the server sends on a worker's stream when a study stops (`worker._stop_push`)
STOP_OP = "studyflow_stop"


@dataclass(frozen=True)
class Held:
    """A trial loop's argument that the study server holds (`ServedStudy.held`): the objective
    or data given to `optimize()` as a value. Each worker process fetches it once
    (`studyflow_held`), whatever the number of loops, where as a task argument it was sent once
    per loop; and a loop needs no Dask dependency, which would tie every loop to the workers
    holding it."""

    name: str  # "objective" or "data"


class _Message:
    # list fields that hold other messages: {field: message class}
    nested: ClassVar[dict[str, type[_Message]]] = {}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Any:
        if not cls.nested:
            return cls(**data)
        return cls(**{**data, **{k: [m.from_wire(x) for x in data.get(k, ())] for k, m in cls.nested.items()}})

    def wire(self) -> dict[str, Any]:
        return {**self.__dict__, **{k: [x.wire() for x in getattr(self, k)] for k in self.nested}}


@dataclass
class TrialLease(_Message):
    """One trial leased to a loop: what its objective's `RemoteTrial` is made from."""

    number: int
    params: dict[str, Any]  # the study file's parameters, sampled at the ask
    key: str  # the trial's content address in the trial store
    seed: int  # derived from the key
    artifact_dir: str | None  # where the objective may write files
    distributions: dict[str, str] = field(default_factory=dict)  # {param: Optuna's JSON}
    datetime_start: str | None = None  # ISO format, the server trial's start
    # the sampler's relative parameters for names the objective suggests itself (define-by-run),
    # sampled at the ask as Optuna samples them at the first suggest: {param: value}, and
    # {param: Optuna's JSON} of the distribution a suggest must ask for to get the value
    relative: dict[str, Any] = field(default_factory=dict)
    relative_distributions: dict[str, str] = field(default_factory=dict)


INTERRUPTED = "INTERRUPTED"  # `worker._interrupt`: the trial is re-run, as a stopped run's are


@dataclass
class TrialOutcome(_Message):
    """What a loop reports of one trial it ran."""

    number: int
    state: str  # "COMPLETE", "PRUNED", "FAIL", or INTERRUPTED (a Ctrl-C reached its worker mid-trial)
    values: list[float] | None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # one line; the traceback travels beside it for the server's log
    traceback: str | None = None
    duration_s: float | None = None  # the objective's own run time
    artifacts: bool = False  # the objective asked for its artifact folder
    # what the objective set through `trial.storage` (constraints, artifact records, an MLflow run id)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    # suggests the loop answered from the lease's relative parameters, in call order:
    # [method, name, kwargs], replayed on the server's trial before the tell records them
    suggested: list[list[Any]] = field(default_factory=list)

    # attrs travel as the JSON the journal stores (`json_attrs` checked they are): an int beyond
    # 64 bits, which JSON holds and msgpack cannot, would otherwise kill the loop
    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Any:
        system_attrs = data["system_attrs"]
        return cls(**{**data, "user_attrs": json.loads(data["user_attrs"]),
                      "system_attrs": json.loads(system_attrs) if system_attrs else {}})

    def wire(self) -> dict[str, Any]:
        return {**self.__dict__, "user_attrs": json.dumps(self.user_attrs),
                "system_attrs": json.dumps(self.system_attrs) if self.system_attrs else ""}


def json_attrs(attrs: dict[str, Any], kind: str = "user attr") -> tuple[dict[str, Any], str | None]:
    """The attrs the journal's JSON can hold, and an error naming the first it cannot
    (`RecordError`: the trial fails, as `set_user_attr` on Optuna's journal storage raises)."""
    try:
        json.dumps(attrs)
        return attrs, None
    except (TypeError, ValueError):
        kept, error = {}, None
        for key, value in attrs.items():
            try:
                json.dumps(value)
                kept[key] = value
            except (TypeError, ValueError) as exc:
                error = error or f"RecordError: {kind} {key!r}: {type(exc).__name__}: {exc}"
        return kept, error


@dataclass
class ExchangeRequest(_Message):
    """A loop's request: outcomes to tell, trials given back, how many trials it wants."""

    loop_id: str
    worker: str  # the worker's address
    outcomes: list[TrialOutcome] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)  # held, never begun: given back
    want: int = 1
    wait_s: float = 1.0  # how long an idle loop waits at the server for a trial
    worker_id: str | None = None  # the worker process's id (a restarted one reuses the address)
    running: int | None = None  # the trial the loop runs as it sends this
    ahead: bool = False  # its trials are shorter than a round trip: sample its next one early

    nested: ClassVar[dict[str, type[_Message]]] = {"outcomes": TrialOutcome}


@dataclass
class Reply(_Message):
    """The server's answer to an exchange."""

    status: str  # one of STATUSES
    trials: list[TrialLease] = field(default_factory=list)
    policy: dict[str, Any] | None = None  # the prefetch policy (`server._prefetch`)
    ends_in: float | None = None  # seconds until budget.timeout_s: start no trial after
    reason: str | None = None  # why the study stops
    parked_s: float = 0.0  # time the exchange waited for a leasable trial, not being served
    trails: str | None = None  # with trials: the folder the loop keeps its trail in (`_trail`)

    nested: ClassVar[dict[str, type[_Message]]] = {"trials": TrialLease}
