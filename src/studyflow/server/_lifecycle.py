"""A served study's life: open (or resume) its journal, and close it.

Invariants: a new journal gets the `warm_start` history and the `enqueue` trials once, before
the first ask; a resumed one never again. On resume a trial left RUNNING by a killed run is
completed from the trial store when its result got there, else failed and re-enqueued with its
parameters (a journal has no heartbeat), and one only held by a loop is dropped. On close no
trial stays RUNNING: begun ones fail and are re-enqueued, held ones are dropped, and every
received outcome reaches the journal. The failures and the active time (`Budget`) a resumed
run starts from are the journal's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._attrs import ATTEMPT_ATTR
from studyflow._attrs import ERROR_ATTR
from studyflow._attrs import KEY_ATTR
from studyflow._attrs import INTERRUPTED_ERROR
from studyflow._attrs import NOT_RUN_ATTR
from studyflow._attrs import STARTED_ATTR
from studyflow._attrs import WARM_START_ATTR
from studyflow._compat import storage_of
from studyflow._compat import study_id_of
from studyflow._compat import trial_id_of
from studyflow.config import StudyConfig
from studyflow.errors import StudyflowError
from studyflow.optuna_ext import ServerJournalStorage
from studyflow.optuna_ext import SingleWriterJournal
from studyflow.optuna_ext import grid_size
from studyflow.optuna_ext import make_pruner
from studyflow.optuna_ext import make_sampler
from studyflow.server._budget import ACTIVE_S_ATTR
from studyflow.server._budget import UNLIMITED
from studyflow.server._constraints import feasible
from studyflow.server._finish_log import FinishLog
from studyflow.store import TrialStore

if TYPE_CHECKING:
    from studyflow.server._study import ServedStudy


@dataclass
class StudySpec:
    """What the driver sends to open a study on the server."""

    study_id: str
    config: StudyConfig
    journal_path: str
    store_root: str
    key_base: str  # objective identity + code version + data sha256 + objective_args
    concurrency: int
    loops: int = 0  # trial loops the driver runs (0: as many as `concurrency`)
    warm_trials: list[FrozenTrial] = field(default_factory=list)  # `warm_start`, marked
    track_finished: bool = False  # the driver has callbacks: log the finish order
    release_idle: bool = False  # adaptive cluster: stop loops the rest of the budget cannot use
    results_root: str = ""  # the driver's results folder: the journal and store must lie in it


def check_paths(spec: StudySpec) -> None:
    """Refuse, in one line, a spec whose journal or store (resolved: no `..`, no symlink out)
    lies outside the results root its driver named: the server opens, appends to and may
    truncate them."""
    if not spec.results_root:
        raise StudyflowError(f"study {spec.study_id}: the spec names no results root; refused")
    root = Path(spec.results_root).resolve()
    for key in ("journal_path", "store_root"):
        path = Path(getattr(spec, key)).resolve()
        if not path.is_relative_to(root):
            raise StudyflowError(f"study {spec.study_id}: {key} {path} lies outside the results root {root}; refused")


@dataclass
class ClosedStudy:
    """What a closed study hands back to the plugin, which sends its driver the trials table
    built from it (`_replies.final_tables`)."""

    trials: list[FrozenTrial]
    best: dict[str, Any]


def open_study(spec: StudySpec) -> ServedStudy:
    from studyflow.server._study import ServedStudy

    cfg = spec.config
    backend = SingleWriterJournal(spec.journal_path)
    storage = ServerJournalStorage(backend)
    existing = _trials_in(storage, cfg.name)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.name,
        directions=cfg.study_directions,
        sampler=make_sampler(cfg, resumed_trials=existing),  # built once, seeded for a resume
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    if not existing:
        _seed_new_study(study, spec)
    _name_metrics(study, cfg.metric_names)
    n_trials = cfg.budget.n_trials if cfg.budget.n_trials is not None else UNLIMITED
    if cfg.sampler.name == "grid":
        # the enqueued trials hold no grid point (as in Optuna's grid sampler) but count toward
        # n_trials; it ends when every point has run (`_grid_spent`)
        n_trials = min(n_trials, grid_size(cfg) + len(cfg.enqueue))
    store = TrialStore(spec.store_root)
    store.load_index()
    served = ServedStudy(spec=spec, study=study, backend=backend, store=store, n_trials=n_trials)
    resume(served)
    if spec.track_finished:
        served.finish_log = FinishLog.after_history(study)
    return served


def _trials_in(storage: ServerJournalStorage, name: str) -> int:
    """How many trials the journal holds for the study (0 for a new one)."""
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(name))
    except KeyError:
        return 0


def _name_metrics(study: optuna.Study, names: list[str] | None) -> None:
    """The study file's `metric_names`, journaled as `study.set_metric_names` journals them (so
    Optuna, optuna-dashboard and `trial.study` read them); again on a resume where they changed."""
    if names is not None and study.metric_names != list(names):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(names))


def _seed_new_study(study: optuna.Study, spec: StudySpec) -> None:
    """A new journal starts with the `warm_start` history and then the `enqueue` trials, which
    run first; a resumed journal has both already."""
    study.add_trials(spec.warm_trials)
    for params in spec.config.enqueue:
        study.enqueue_trial(params)


def resume(served: ServedStudy) -> None:
    """Count what the journal holds, and settle the trials a killed run left RUNNING."""
    study, budget = served.study, served.budget
    storage = storage_of(study)
    for trial in study.get_trials(deepcopy=False):
        if trial.system_attrs.get(NOT_RUN_ATTR) or WARM_START_ATTR in trial.system_attrs:
            continue
        if trial.state == TrialState.RUNNING and not trial.system_attrs.get(STARTED_ATTR):
            served.requeue_retry(trial_id_of(trial))  # only held by a loop: a retry runs as it was,
            served.mark_not_run(trial_id_of(trial))  # and a new trial is sampled afresh
            storage.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
            continue
        budget.n_resumed += trial.state != TrialState.WAITING
        served.define_by_run |= not set(trial.params) <= set(served.space)
        if trial.state == TrialState.RUNNING:
            stored = served.store.get(trial.system_attrs.get(KEY_ATTR, ""))
            if stored is not None and stored.state == "COMPLETE":
                storage.set_trial_state_values(trial_id_of(trial), TrialState.COMPLETE, stored.values)
                budget.count(trial.number, "COMPLETE", stored.values, None)
                continue
            error = "Interrupted: the run was stopped mid-trial"
            storage.set_trial_system_attr(trial_id_of(trial), ERROR_ATTR, error)
            storage.set_trial_state_values(trial_id_of(trial), TrialState.FAIL)
            # the run was stopped, not the trial's worker lost: not an attempt (as `close` does)
            attempt = int(trial.system_attrs.get(ATTEMPT_ATTR, 0))
            served.enqueue_retry(trial.params, trial.number, attempt)
            budget.n_fail += 1
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            budget.count(trial.number, trial.state.name, trial.values, trial.system_attrs.get(ERROR_ATTR),
                         feasible(trial.system_attrs))
    budget.reopen()  # a resumed run decides afresh (the budget may have grown), failures aside
    budget.active_before_s = float(storage.get_study_system_attrs(study_id_of(study)).get(ACTIVE_S_ATTR, 0.0))
    served.backend.flush_to_disk()


def close(served: ServedStudy, reason: str) -> ClosedStudy:
    """Stop handing out trials; fail (and re-enqueue) running ones; write everything.

    Returns the final trials and best, so the driver need not replay the journal it has
    just been served from."""
    budget, leases = served.budget, served.leases
    interrupted = budget.stop_reason is None  # the run was stopped before the study ended
    if interrupted:
        budget.stop_reason = reason
    for number in leases.unstarted():
        served.same_key.ready.append(leases.drop(number).trial)  # type: ignore[union-attr]
    for number in list(leases.leases):
        served.fail_lease(number, INTERRUPTED_ERROR, True, interrupted=interrupted)
    for trial in served.same_key.drain():
        # Held by a loop, or waiting for one: a rerun samples afresh, and runs a retry as it
        # was. (A loop may have begun the trial it held while its last outcome travelled;
        # that result is dropped.)
        if interrupted:
            served.requeue_retry(trial_id_of(trial))
        served.discard(trial)
    served.ordering.apply_all()
    served.save_active_time()
    served.backend.flush_to_disk()
    served.store.close()
    served.backend.close()
    shutil.rmtree(served.trails_dir, ignore_errors=True)  # its loops' trails (`_trail`)
    with contextlib.suppress(OSError):  # the store's trail folder, when no other study has one
        os.rmdir(os.path.dirname(served.trails_dir))
    trials = served.study.get_trials(deepcopy=False)
    # the active time of every run, as `timeout_s` counts it: the card's utilization divides by
    # it, since a resumed study's trials ran in earlier runs too
    return ClosedStudy(trials, {**best_of(served.study, trials), "active_time_s": round(budget.active_s(), 3)})


def best_of(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> dict[str, Any]:
    """The best trial (one objective) or the Pareto front (several), as `best.json` holds them;
    `trials`: the study's, if already in hand (one pass over them instead of three)."""
    none = {"best_number": None, "best_values": None, "best_params": None}
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    # in a constrained study only feasible trials can be best, as `Study.best_trial` has it
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                and feasible(t.system_attrs)]
    own = [t for t in complete if WARM_START_ATTR not in t.system_attrs]
    if not own:
        return none
    if len(study.directions) == 1:  # the first best, as `Study.best_trial` picks it
        pick = min if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else max
        best = pick(own, key=lambda t: t.values[0])
        return {"best_number": best.number, "best_values": best.values, "best_params": best.params}
    if len(own) < len(complete):  # warm-start trials are an earlier study's, not this one's best
        return _front_of_own(own, study.directions, none)
    front = [{"number": t.number, "values": t.values, "params": t.params} for t in study.best_trials]
    return none | {"pareto_front": front}


def _front_of_own(
    trials: list[FrozenTrial], directions: list[Any], none: dict[str, Any]
) -> dict[str, Any]:
    """`best_of` over these trials only, of several objectives: the non-dominated ones."""
    minimize = optuna.study.StudyDirection.MINIMIZE
    signs = np.array([1.0 if d == minimize else -1.0 for d in directions])
    values = np.array([t.values for t in trials], dtype=float) * signs
    front = [{"number": t.number, "values": t.values, "params": t.params}
             for t, v in zip(trials, values)
             if not ((values <= v).all(axis=1) & (values < v).any(axis=1)).any()]
    return none | {"pareto_front": front}
