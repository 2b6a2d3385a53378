"""Every private Optuna and distributed name studyflow uses, in one place.

Optuna and distributed do not promise these names between releases, so the rest of studyflow
reaches them only through this module, which checks at import that the installed versions are
ones the code was written and tested against, and fails with one line naming the supported
range otherwise. Four classes extend Optuna's own and so use their parents' private members:
`optuna_ext._tpe.CachedFitTPESampler` (`TPE_SAMPLER_MEMBERS`),
`optuna_ext._grid.IncrementalGridSampler` (`GRID_SAMPLER_MEMBERS`),
`optuna_ext._journal.ServerJournalStorage` (`JOURNAL_STORAGE_MEMBERS`, and through its parent
`optuna_ext._own_writes.OwnWritesJournalStorage` its replay result's `JOURNAL_REPLAY_MEMBERS`),
all checked at import too, and `worker._trial.RemoteTrial` (`TRIAL_MEMBERS`).
`tests/test_compat.py` pins all of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import numpy as np
import optuna
from optuna._transform import _SearchSpaceTransform as SearchSpaceTransform  # noqa: F401
from optuna._transform import _untransform_numerical_param as untransform_numerical_param  # noqa: F401
from optuna.samplers import GridSampler
from optuna.samplers import TPESampler
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator as ParzenEstimator  # noqa: F401
from optuna.samplers._tpe.sampler import _get_infeasible_trial_score as infeasible_trial_score  # noqa: F401
from optuna.samplers._tpe.sampler import _split_trials as split_trials  # noqa: F401
from optuna.samplers._tpe.sampler import default_gamma  # noqa: F401
from optuna.samplers._tpe.sampler import default_gamma_multiobjective  # noqa: F401
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.storages.journal._storage import NOT_FOUND_MSG as JOURNAL_NOT_FOUND_MSG  # noqa: F401
from optuna.storages.journal._storage import UNUPDATABLE_MSG as JOURNAL_UNUPDATABLE_MSG  # noqa: F401
from optuna.storages.journal._storage import JournalOperation  # noqa: F401
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

# {distribution: (lowest, first unsupported)}: pyproject.toml states the same ranges
SUPPORTED = {"optuna": ((5, 0), (6, 0)), "distributed": ((2024, 8), None)}
# What CachedFitTPESampler uses of TPESampler beyond its public API (it overrides `_sample`).
TPE_SAMPLER_MEMBERS = (
    "_sample", "_build_parzen_estimator", "_compare", "_compute_acquisition_func", "_get_params",
    "_get_internal_repr", "_gamma", "_constant_liar", "_rng", "_n_ei_candidates",
    "_parzen_estimator_cls", "_parzen_estimator_parameters",
)
# What IncrementalGridSampler uses of GridSampler beyond its public API.
GRID_SAMPLER_MEMBERS = ("_n_min_trials", "_all_grids", "_param_names", "_search_space", "_same_search_space",
                        "_get_unvisited_grid_ids")  # overridden: a trial given back unrun visits no point
# What ServerJournalStorage uses of JournalStorage beyond its public API.
JOURNAL_STORAGE_MEMBERS = ("_thread_lock", "_sync_with_backend", "_replay_result")
# What OwnWritesJournalStorage reads and changes of a JournalStorage's replay result, as the
# replay does (`_last_created_trial_id_by_this_process`, set only once a trial is created, too).
JOURNAL_REPLAY_MEMBERS = ("log_number_read", "worker_id", "_studies", "_trials", "_study_id_to_trial_ids",
                          "_trial_id_to_study_id", "_worker_id_to_owned_trial_id")
# What RemoteTrial sets of optuna.Trial without calling its constructor: the id that
# `optuna.artifacts.upload_artifact` passes to the trial's storage.
TRIAL_MEMBERS = ("_trial_id",)


def _release(text: str) -> tuple[int, int]:
    major, minor = (int(part) for part in re.findall(r"\d+", text)[:2])
    return major, minor


def check_versions() -> None:
    """Fail in one line when an installed Optuna or distributed is outside the tested range,
    or lacks a private member the subclasses rely on."""
    for name, (low, high) in SUPPORTED.items():
        found = version(name)
        if _release(found) < low or (high is not None and _release(found) >= high):
            wanted = f">={low[0]}.{low[1]}" + (f",<{high[0]}.{high[1]}" if high else "")
            raise ImportError(f"studyflow needs {name}{wanted} (it reaches into private names that "
                              f"change between releases); {name} {found} is installed")
    tpe = TPESampler(seed=0)
    grid = GridSampler({"x": [0]})
    journal = JournalStorage(_EmptyJournal())
    for owner, members in ((tpe, TPE_SAMPLER_MEMBERS), (grid, GRID_SAMPLER_MEMBERS), (journal, JOURNAL_STORAGE_MEMBERS),
                           (journal._replay_result, JOURNAL_REPLAY_MEMBERS)):
        missing = [m for m in members if not hasattr(owner, m)]
        if missing:
            raise ImportError(f"studyflow: optuna {version('optuna')}'s {type(owner).__name__} lacks "
                              f"{missing}; supported: optuna>=5.0,<6")


class _EmptyJournal(BaseJournalBackend):
    """A journal with no records: what the member check builds a `JournalStorage` over."""

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return []

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        pass


# --- private attributes of public Optuna objects ---

def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def sampler_rng(sampler: optuna.samplers.BaseSampler) -> np.random.RandomState:
    """The random state a seeded sampler draws from (random search's one-call draw)."""
    return sampler._rng.rng  # type: ignore[attr-defined]


def replayed_trials(storage: JournalStorage) -> tuple[dict[int, FrozenTrial], dict[int, list[int]]]:
    """A journal storage's replayed trials `{trial id: trial}` and `{study id: trial ids}`."""
    replayed = storage._replay_result
    return replayed._trials, replayed._study_id_to_trial_ids


def tell(study: optuna.Study, trial: optuna.Trial, values: Sequence[float] | None = None,
         state: TrialState | None = None) -> Any:
    """`Study.tell` without its deep copy of the told trial, from any thread.

    GridSampler.after_trial calls `study.stop()` once the grid is used up, which Optuna allows
    only inside `optimize()`; the server owns the budget, so the thread is marked as inside."""
    study._thread_local.in_optimize_loop = True
    if state is None:
        return _tell_with_warning(study, trial, value_or_values=values)
    return _tell_with_warning(study, trial, state=state)


def stop_called(study: optuna.Study) -> bool:
    """Whether `study.stop()` was called on `study` (Optuna's `Study._stop_flag`) since this was
    last asked; resets it. `allow_stop` lets Optuna's `stop()` run outside `optimize()`."""
    called, study._stop_flag = bool(study._stop_flag), False
    return called


def allow_stop(study: optuna.Study) -> None:
    """Let `study.stop()` be called on this thread, as inside `optimize()` (else Optuna raises)."""
    study._thread_local.in_optimize_loop = True


def fresh_trials_view(study: optuna.Study) -> None:
    """Make the calling thread's next sampler call read the study's trials anew.

    Optuna caches the trial list per thread (`Study._thread_local.cached_all_trials`) and
    clears it only in `ask` and `tell` on that thread. The study server samples on whichever
    thread serves a call (the event loop, or distributed's offload thread), so a
    define-by-run `suggest` or a `should_prune` on a thread that did not ask would see the
    study as it was at that thread's last ask: TPE, GP and CMA-ES stuck in their start-up.
    """
    study._thread_local.cached_all_trials = None


def forget_relative_params(trial: optuna.Trial) -> None:
    """Let Optuna sample a trial's relative parameters again at its first suggest, as it does
    by default (`Trial._relative_params`, evaluated lazily "to get as latest search space as
    possible"): the study server evaluates them at the ask, and an empty answer (a sampler in
    its start-up, no shared space yet) must not stick to a trial that runs after the start-up."""
    trial._relative_params = None
    trial.relative_search_space = None


def draw_independent(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Sample `space` for `trial` now, one `sample_independent` each, as its suggests would
    (Optuna's `Trial._suggest`), and keep the draws as the trial's relative parameters: Optuna's
    own suggest of one then takes the drawn value (`Trial._is_relative_param`), as it takes a
    multivariate sampler's. A draw the trial does not use must be dropped before a suggest of
    that name with another distribution (`drop_drawn`)."""
    frozen = trial._get_latest_trial()
    study = optuna.pruners._filter_study(trial.study, frozen)
    values = {name: trial.study.sampler.sample_independent(study, frozen, name, distribution)
              for name, distribution in space.items()}
    keep_drawn(trial, values, space)
    return values


def keep_drawn(trial: optuna.Trial, values: dict[str, Any], space: dict[str, Any]) -> None:
    """Keep `values`, drawn from `space`, as the trial's relative parameters (`draw_independent`)."""
    trial._relative_params = dict(values)
    trial.relative_search_space = dict(space)


def handed_relative(trial: optuna.Trial) -> dict[str, Any]:
    """The relative parameters a trial holds already (sampled at the ask and handed out with
    its lease), without sampling them: `Trial.relative_params` would sample them if not."""
    return dict(trial._relative_params or {})


def drop_drawn(trial: optuna.Trial, name: str) -> None:
    """Forget `draw_independent`'s draw of `name`: Optuna samples it anew at its suggest."""
    if trial._relative_params:
        trial._relative_params.pop(name, None)


check_versions()


def offload(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """distributed's `offload`: run blocking work off the event loop (awaitable). distributed
    is imported on first use: a report or a journal tool that imports this module loads none of it."""
    from distributed.utils import offload as off_the_loop

    return off_the_loop(fn, *args, **kwargs)


def sync(loop: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """distributed's `sync`: call a coroutine function on `loop` from another thread, and wait."""
    from distributed.utils import sync as on_the_loop

    return on_the_loop(loop, fn, *args, **kwargs)


def keep_own_forkserver_preload() -> None:
    """Stop distributed's `get_mp_context` from importing, on its first call, every package it
    knows of (pandas, lz4, ...: ~0.4 s of the driver's CPU while its workers start) to name them
    as the forkserver's preload. studyflow starts the forkserver itself, with its own list
    (`_processes.warm_forkserver`), so that list would never be used. The flag exists from
    distributed 2024.8, the lowest version supported; a release without it only costs the
    imports again (`test_compat` says so)."""
    import distributed.utils

    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True


WORKER_START_POLL_S = 0.005  # how often a nanny of this process looks for its worker's start


def hear_worker_starts_soon() -> None:
    """Have this process's nannies read their worker process's start message every
    `WORKER_START_POLL_S`, not every 50 ms (distributed's `WorkerProcess._init_msg_interval`,
    a poll of a multiprocessing queue): a local cluster is up only once its last worker's
    message is read, which came 0-50 ms after that worker had started; a few more wake-ups of
    the event loop while workers start cost far less. A release without the attribute only
    costs the wait again (`test_compat` says so)."""
    from distributed.nanny import WorkerProcess

    if isinstance(getattr(WorkerProcess, "_init_msg_interval", None), float):
        WorkerProcess._init_msg_interval = WORKER_START_POLL_S


def build_tls_defaults() -> None:
    """Build tornado's default client TLS context now, off the path of the first connection.
    tornado (6.5 on) builds it lazily, loading the system's CA bundle (~30 ms of CPU), when a
    process accepts its first TLS connection: its server wraps the socket with distributed's
    own context, then makes an `SSLIOStream` that asks for the default and never uses it.
    Built in the workers' forkserver, every worker inherits it; on a thread of the driver,
    OpenSSL loads the bundle without holding the GIL. Older tornado built it at import."""
    import tornado.netutil

    build = getattr(tornado.netutil, "_client_ssl_defaults", None)
    if callable(build):
        build()


def build_tls_defaults_soon() -> None:
    """`build_tls_defaults` on a thread, with tornado's streams waiting for it: its cache is
    not locked, and the driver's event loop accepted its first TLS connection while the thread
    still loaded the bundle, so it loaded a second copy (33-40 ms on the loop, every run)."""
    import threading

    import tornado.iostream
    import tornado.netutil

    build = getattr(tornado.netutil, "_client_ssl_defaults", None)
    if not callable(build) or getattr(tornado.iostream, "_client_ssl_defaults", None) is not build:
        return
    built = threading.Event()

    def when_built() -> Any:
        built.wait()
        return build()

    def run() -> None:
        try:
            build()
        finally:
            built.set()

    threading.Thread(target=run, name="studyflow-tls-defaults", daemon=True).start()
    tornado.iostream._client_ssl_defaults = when_built  # once the thread runs: it sets `built`
