"""The driver: what `studyflow optimize`, `studyflow run` and `studyflow.optimize()` call.

It checks the inputs before any cluster starts, takes the study's lock, starts or attaches the
cluster, registers the study server, starts one trial loop per slot (and restarts a loop whose
task died), shows progress, and returns the finished study read back from its journal.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from contextlib import nullcontext
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import cloudpickle
from distributed import Client
from distributed import Scheduler
from distributed import wait
from distributed.protocol import to_serialize
from optuna.trial import FrozenTrial

from studyflow import outputs
from studyflow._hashing import canonical_json
from studyflow._processes import ForkserverDiedError
from studyflow._processes import warm_forkserver
from studyflow.config import StudyConfig
from studyflow.config import load_study
from studyflow.driver._cluster import connecting
from studyflow.driver._cluster import jobs_used
from studyflow.driver._supervisor import supervisor_for
from studyflow.driver._data import resolve_data
from studyflow.driver._hooks import Callback
from studyflow.driver._hooks import Hooks
from studyflow.driver._hooks import ProgressCallback
from studyflow.driver._loops import TrialLoops
from studyflow.driver._loops import eligible_slots
from studyflow.driver._lock import StudyLock
from studyflow.driver._parent import is_alive
from studyflow.driver._parent import parent_pids
from studyflow.driver._result import ResultsLayout
from studyflow.driver._result import StudyResult
from studyflow.driver._result import load_journal
from studyflow.errors import ConfigError
from studyflow.errors import ObjectiveError
from studyflow.errors import StudyAbortedError
from studyflow.errors import StudyflowError
from studyflow.optuna_ext import check_sampler_options
from studyflow.optuna_ext import warm_trials
from studyflow.outputs import Progress
from studyflow.outputs import scores_are_cheap
from studyflow.outputs import scores_if_loaded
from studyflow.protocol import Held
from studyflow.server import INVALID_STUDY
from studyflow.server import STUDY_FAILED
from studyflow.server import StudyServer
from studyflow.server import StudySpec
from studyflow.server import best_of
from studyflow.server import hand_over
from studyflow.store import TrialStore
from studyflow.store import code_version
from studyflow.store import objective_code_version
from studyflow.store import objective_identity
from studyflow.store import objective_state
from studyflow.store import store_in_use
from studyflow.store import strategy_fingerprint
from studyflow.worker import ObjectiveFn
from studyflow.worker import add_search_paths
from studyflow.worker import check_findable
from studyflow.worker import check_signature
from studyflow.worker import import_objective
from studyflow.worker import objective_problem_in_a_thread
from studyflow.worker import run_trial_loop
from studyflow.worker import search_paths
from studyflow.worker import script_of

if TYPE_CHECKING:  # pandas and pyarrow load where a table is built or read, not at start
    import pandas as pd
    import pyarrow as pa

_logger = logging.getLogger(__name__)
POLL_S = 0.2
IMPORTANCE_TIMEOUT_S = 10.0  # a worker's share of the study card, else the report's
WORKER_WAIT_S = 60.0  # how long a study waits for a cluster with no worker up (see `_workers`)


def optimize(
    objective: ObjectiveFn | None = None,
    study: str | Path | dict[str, Any] | StudyConfig = "",
    *,
    data: pd.DataFrame | str | Path | None = None,
    client: Client | None = None,
    overrides: list[str] | None = None,
    results_dir: str | Path = "results",
    n_workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    watch_parent: bool = False,
    callbacks: list[Callback] | None = None,
    progress_callback: ProgressCallback | None = None,
    exiting: bool = False,
) -> StudyResult:
    """Run a study on Dask and return it when its budget is spent.

    Args:
        objective: the objective; if None, the study file's `objective` ('module:function').
        study: a study file path, a dict, or a `StudyConfig`.
        data: a DataFrame, a parquet path or any picklable value (arrays `(X, y)`, hashed into
            the trial keys); if None and the study names a dataset, the staged
            `results/data/<dataset>.parquet`.
        client: a connected Dask client; if None, a `LocalCluster` of `n_workers` processes
            is started (or `address` attached).
        overrides: OmegaConf dot-list (`["budget.n_trials=50"]`).
        watch_parent: stop when the parent process dies (set by the CLI under Snakemake).
        callbacks: Optuna-style `cb(study, frozen_trial)`, called in this process once per
            finished trial (COMPLETE, PRUNED or FAIL) in finish order (see `driver._hooks`).
        progress_callback: `cb(done, total)`, called once per COMPLETE or PRUNED trial.
        exiting: the caller ends the process right after (the CLI): a local cluster started
            here is left to end with it instead of being closed (`connecting`).
    """
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, Integral) or n_workers < 1):
        raise ValueError(f"n_workers: {n_workers!r} is not a positive whole number")
    # a study file or dict for a callable given here may leave out `objective:`: it names the callable
    defaults = {"objective": objective_identity(objective)} if objective is not None else None
    cfg = load_study(study, overrides, defaults=defaults)
    label = cfg.source or cfg.name or "<study>"
    paths = search_paths(cfg.source)
    add_search_paths(paths)
    if objective is None:
        check_findable(cfg.objective, label)  # a misspelt module fails before any cluster starts
    check_sampler_options(cfg)
    hooks = Hooks(cfg, callbacks, progress_callback)
    warm = warm_trials(cfg)  # read now: a bad warm_start fails before any cluster starts
    layout = ResultsLayout(Path(results_dir))
    data_arg, data_sha = resolve_data(cfg, data, layout.data(cfg.data or ""))
    local = client is None and address is None and cfg.cluster.mode == "local"
    if local:  # what the CLI did before its own imports (then a no-op): a Python caller's workers fork warm too
        module = cfg.objective.partition(":")[0] if objective is None else getattr(objective, "__module__", None)
        warm_forkserver([module] if module and module != "__main__" else [], tables=data_arg is not None)
    starting = nullcontext(lambda: client) if client is not None else connecting(
        n_workers or cfg.concurrency, address, cluster=jobs_used(cfg.cluster, cfg.window or cfg.concurrency),
        tls_dir=layout.store / "tls", search_paths=paths, resources=cfg.worker_resources, exiting=exiting,
        source=label)
    with starting as started:  # a local cluster starts meanwhile
        code = _checked_code(cfg, objective, label, paths, started if local else None, data_arg is not None)
        key_base = _key_base(cfg, objective, code, data_sha)
        strategy = strategy_fingerprint(cfg.sampler.name, cfg.pruner.name, paths)
        journal = layout.journal(cfg, key_base, canonical_json(strategy) if strategy else "")
        # the store too, shared: `studyflow store gc` refuses while the study runs (store/_gc.py)
        with StudyLock(journal.with_suffix(".lock")), store_in_use(layout.store):
            return _run(cfg, objective, started(), data_arg, data_sha, journal, layout.store, key_base,
                        paths, progress, watch_parent, hooks, warm)


def _checked_code(cfg: StudyConfig, objective: ObjectiveFn | None, label: str, paths: list[str],
                  workers: Callable[[], Client] | None, has_data: bool) -> str:
    """The objective's code version, once it is known to import and to take what studyflow
    passes (else one line, `ObjectiveError`, with nothing written). With `workers` (the local
    cluster being started), whose processes import the objective's module anyway, one of them
    checks it and the version is read from the source files: the driver never imports it
    (scikit-learn ~1 s of CPU while the workers start, torch more). Else it is imported here."""
    if objective is None and workers is not None:
        code = objective_code_version(cfg.objective, cfg.objective_version, cfg.code.packages)
        if code is not None:
            module = cfg.objective.partition(":")[0]
            try:
                problem = _on_one_worker(workers(), objective_problem_in_a_thread, cfg.objective,
                                         list(cfg.objective_args), paths, has_data)
            except (WorkerDiedError, ForkserverDiedError) as exc:  # a native crash at import
                what = "the worker process that tried it" if isinstance(exc, WorkerDiedError) else "the workers' forkserver"
                raise ObjectiveError(label, "objective", (
                    f"importing module {module!r} killed {what} (a crash in native code at import?); "
                    f"`python -c 'import {module}'` shows it")) from None
            if problem is not None:
                raise ObjectiveError(label, "objective", problem)
            return code
    fn = objective if objective is not None else import_objective(cfg.objective, label)
    check_signature(fn, cfg.objective_args, label, has_data)
    return code_version(fn, cfg.objective_version, cfg.code.packages)


class WorkerDiedError(StudyflowError):
    """The worker running a quick check (`_on_one_worker`) died under it."""


def _on_one_worker(client: Client, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on one worker, as an RPC (`Client.run`): 2-4 ms here, where a task's submit
    and result took 16-46 ms, on the path of every local run's start. `fn` runs on the worker's
    event loop (a coroutine function there hands its work to a thread). `WorkerDiedError` when
    the worker died under it."""
    worker = next(iter(client.scheduler_info(n_workers=-1)["workers"]))
    try:
        return client.run(fn, *args, workers=[worker])[worker]
    except (OSError, KeyError) as exc:  # the comm to it closed, or it left the broadcast's answer
        raise WorkerDiedError(f"worker {worker} died running {getattr(fn, '__name__', fn)}") from exc


def _key_base(cfg: StudyConfig, objective: ObjectiveFn | None, code: str, data_sha: str | None) -> str:
    """What every trial key of this study shares: objective identity and code, data, settings,
    and what an objective built at run time carries (`objective_state`: a closure's values...)."""
    identity = cfg.objective if objective is None else objective_identity(objective)
    base = {
        "objective": identity,
        "code": code,
        "data_sha256": data_sha,
        "objective_args": cfg.objective_args,
        "n_objectives": len(cfg.study_directions),
    }
    state = None if objective is None else objective_state(objective)
    return canonical_json(base if state is None else {**base, "state": state})


def _held_by_server(objective: ObjectiveFn | None, data: Any) -> tuple[Any, Any, bytes]:
    """The trial loops' objective and data arguments, and what the study server holds for them:
    a callable objective, and data given as a value (a DataFrame, arrays; a parquet file goes
    as its path), travel once, cloudpickled, to the server, which holds them (`protocol.Held`)."""
    held = {"objective": objective} if objective is not None else {}
    if data is not None and not isinstance(data, str):
        held["data"] = data
    objective_arg = Held("objective") if "objective" in held else None
    data_arg = Held("data") if "data" in held else data
    return objective_arg, data_arg, cloudpickle.dumps(held) if held else b""


def _slots(client: Client, resources: dict[str, float]) -> int:
    """Worker threads that may run this study's trials: those whose workers carry every
    resource the study asks for (`worker_resources: {GPU: 1}` routes trials to GPU workers)."""
    slots = eligible_slots(_workers(client), resources)
    if not slots:
        raise StudyflowError(f"no worker carries the resources {resources} this study asks for (worker_resources)")
    return slots


def _workers(client: Client) -> list[dict[str, Any]]:
    """The cluster's workers. With none up (a cluster still starting, or whose workers are
    being restarted after a hung trial), wait up to `WORKER_WAIT_S` for one, as Dask work would."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    if workers:
        return workers
    _logger.info("no worker is up yet at %s: waiting up to %g s for one", client.scheduler.address, WORKER_WAIT_S)
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise StudyflowError(f"no worker joined the cluster at {client.scheduler.address} "
                             f"within {WORKER_WAIT_S:g} s") from None
    return list(client.scheduler_info(n_workers=-1)["workers"].values())


def _run(
    cfg: StudyConfig,
    objective: ObjectiveFn | None,
    client: Client,
    data: Any,
    data_sha: str | None,
    journal: Path,
    store: Path,
    key_base: str,
    paths: list[str],
    show_progress: bool,
    watch_parent: bool,
    hooks: Hooks,
    warm: list[FrozenTrial],
) -> StudyResult:
    started = time.monotonic()
    # an adaptive cluster starts with no job: its loops are what make it ask for some (the SLURM
    # cluster `connecting` started; not a user's `client=` for a study file written for SLURM)
    ours = type(getattr(client, "cluster", None)).__name__ == "SLURMCluster"
    adaptive = cfg.cluster.max_slots() if cfg.cluster.mode == "slurm" and ours else None
    slots = adaptive or _slots(client, cfg.worker_resources)
    concurrency = cfg.window or cfg.concurrency or slots
    study_id = f"{cfg.name}-{uuid.uuid4().hex[:8]}"
    client.register_plugin(StudyServer(), name=StudyServer.name)
    n_loops = min(concurrency, slots)
    spec = StudySpec(study_id, cfg, str(journal.resolve()), str(store.resolve()), key_base, concurrency, n_loops)
    spec.warm_trials, spec.track_finished, spec.release_idle = warm, hooks.track_finished, bool(adaptive)
    spec.results_root = str(store.parent.resolve())  # the server opens nothing outside it
    objective_arg, data_arg, held = _held_by_server(objective, data)
    # local and SLURM clusters run their scheduler here; a cluster of the user's (`client=`) may not
    in_process = isinstance(getattr(getattr(client, "cluster", None), "scheduler", None), Scheduler)
    sent = {"held_token": hand_over(held)} if held and in_process else {"held": to_serialize(held)}
    opened = client.sync(client.scheduler.studyflow_open, spec=pickle.dumps(spec), **sent)
    outputs.import_tables_meanwhile()
    _logger.info(
        "study %s: %d slots, concurrency %d, journal %s (%d trials already in it)",
        cfg.name, slots, concurrency, journal, opened["resumed"],
    )
    loop_args = (
        study_id,
        objective_arg or cfg.objective,
        data_arg,
        cfg.objective_args,
        len(cfg.study_directions),
        paths,
        script_of(objective),
    )

    # n_trials: null (no limit): as many restarts as a 1,000-trial study may have
    max_restarts = 3 * concurrency + (opened["n_trials"] or 1_000) * (cfg.budget.retries + 1)
    loops = TrialLoops(client, study_id, cfg.name, run_trial_loop, loop_args, cfg.worker_resources,
                       cfg.window or cfg.concurrency, max_restarts)
    loops.follow(slots, done=False)
    progress = Progress(cfg.name, opened["n_trials"], show_progress)
    ancestors = parent_pids(2) if watch_parent else []
    supervisor = supervisor_for(client, adaptive=bool(adaptive))
    reason = "closed"
    with _scheduler_lost_as_one_line(client, cfg.name, journal):
        try:
            hooks.start(client, study_id, opened)
            while True:
                workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
                slots = adaptive or eligible_slots(workers, cfg.worker_resources)
                # Answers within POLL_S, or as soon as the study is done; with this study's share
                # of the slots while other studies use the cluster too.
                status = client.sync(client.scheduler.studyflow_status, study_id=study_id, wait_s=POLL_S,
                                     slots=slots)
                progress.update(status)
                hooks.on_status(client, study_id, status)
                # adaptive: no more loops than trials left, so jobs are given back in the tail
                left = (status["n_trials"] - status["complete"] - status["pruned"]
                        if adaptive and status["n_trials"] is not None else None)
                loops.follow(slots, status["done"], status.get("share"), left)
                if status["done"]:
                    reason = status["stop_reason"]
                    break
                supervisor.check()
                dead = [pid for pid in ancestors if not is_alive(pid)]
                if dead:
                    raise StudyflowError(f"study {cfg.name}: parent process {dead[0]} died; stopping")
            wait(loops.futures, timeout=30)
        finally:
            progress.close()
            reply = client.sync(client.scheduler.studyflow_close, study_id=study_id, reason=reason,
                                **hooks.close_args())
            closed = pickle.loads(reply["result"]) if "result" in reply else None
            client.cancel(loops.futures, force=True)
    hooks.on_close(reply)
    for err in status["errors"]:
        _logger.info("failed %s", err)
    if reason and reason.startswith(INVALID_STUDY):
        raise ConfigError(cfg.source or "<study>", *reason[len(INVALID_STUDY):].split(": ", 1))
    if reason and reason.startswith(("too many failures", STUDY_FAILED)):
        raise StudyAbortedError(f"study {cfg.name} ({cfg.source}): {reason}; see the log for tracebacks")
    if closed is None:  # the scheduler lost the study (restarted?): the journal has it all
        loaded = load_journal(cfg, journal)
        closed = outputs.FinalTables(outputs.trials_table(loaded.get_trials(deepcopy=False),
                                                          cfg.value_columns, TrialStore(store)),
                                     best_of(loaded))
    trials = closed.trials
    wall = time.monotonic() - started
    _logger.info("study %s finished (%s) in %.1f s: %s", cfg.name, reason, wall, json.dumps(
        {k: status.get(k) for k in ("complete", "pruned", "failed", "lost", "best_value", "best_number")}))
    return StudyResult(cfg, trials, journal, wall, slots, reason, data_sha, closed.best,
                       _importances_on_a_worker(client, trials, cfg))


@contextmanager
def _scheduler_lost_as_one_line(client: Client, name: str, journal: Path) -> Iterator[None]:
    """A scheduler that goes away mid-study (a standing cluster brought down, a crash) ends the
    run in one line, not Dask's tracebacks, once the client has given up reconnecting (30 s)."""
    try:
        yield
    except OSError as exc:
        if client.status == "running":
            raise
        raise StudyflowError(f"study {name}: lost the cluster's scheduler mid-study ({exc}); every trial "
                             f"told is in its journal {journal}: rerun to resume") from None


def _importances_on_a_worker(client: Client, trials: pa.Table, cfg: StudyConfig) -> dict[str, Any] | None:
    """The study card's parameter importances from a worker that computes them without
    importing scikit-learn (`outputs._importance`), while the cluster is still up: the report
    then skips that import. None when no worker is up, none would compute them cheaply (asked
    first, so the trials table travels only where it is used) or it fails: the report computes them."""
    if outputs.why_no_scores(trials) is not None or not client.scheduler_info(n_workers=-1)["workers"]:
        return None  # too few trials or parameters: the report says so without computing anything
    try:
        if not client.submit(scores_are_cheap, pure=False).result(timeout=IMPORTANCE_TIMEOUT_S):
            return None
        return client.submit(scores_if_loaded, trials, cfg, pure=False).result(timeout=IMPORTANCE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001  the report computes them itself
        _logger.debug("importances on a worker: %s", exc)
        return None
