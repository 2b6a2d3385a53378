"""After `journal repair` cut a journal to its readable prefix: bring back, from the trial store,
the finished trials whose records lay after the hole.

The store keeps one result line per distinct trial (study name, number, key, params, values,
attrs), written by the server as it told the trial, so a COMPLETE trial cut from the journal is
still there. Which store lines are this journal's own is decided by the damaged file itself (its
`.bak` copy): a line must name the journal's study, and either its key is one the journal
recorded (every trial gets `studyflow:key` at its ask) or the journal told a trial of its number
COMPLETE with its very values (the hole was the trial's own create record). A trial answered
from the store by another study's line (same objective and parameters) comes back by its key,
under the number the damaged file told COMPLETE with its values. Another run of the
same study name (another journal hash: another seed, objective code or data) asked other keys,
so its trials stay out.

A trial the prefix holds unfinished (created before the hole, told after it) is finished in
place; any other comes back as a new finished trial (`create_trial` + `add_trial`) under its
old number where that number is free, the numbers between filled with trials marked not run
(left out of tables and counts; the store has nothing for them), else at the end. Every one is
marked `studyflow:recovered` = its old number, so a resume counts it toward `n_trials` once and
never asks for it again. Distributions come from the kept trials (what the journal itself used,
define-by-run ones too), else from `<results>/studies/<study>/resolved.yaml`; a trial with a
parameter neither knows (or a value outside it) is reported, not added. PRUNED trials are not
in the store and are not recovered.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._attrs import DURATION_ATTR
from studyflow._attrs import ERROR_ATTR
from studyflow._attrs import KEY_ATTR
from studyflow._attrs import NOT_RUN_ATTR
from studyflow._attrs import WARM_START_ATTR
from studyflow._compat import trial_id_of
from studyflow.config import load_study
from studyflow.errors import ConfigError
from studyflow.optuna_ext._journal import SingleWriterJournal
from studyflow.optuna_ext._journal_check import read_records
from studyflow.optuna_ext._space import distributions
from studyflow.store import StoredResult
from studyflow.store import TrialStore

RECOVERED_ATTR = "studyflow:recovered"  # re-added from the trial store by a repair: its old number
LOST_ERROR = "Lost: its records were after the hole a journal repair cut, and the trial store has no result for it"
_CREATE_STUDY, _CREATE_TRIAL, _SET_STATE, _SET_SYSTEM_ATTR = 0, 4, 6, 9


@dataclass
class Recovery:
    """What `recover` did: the numbers of the trials re-added (finished in place or added),
    placeholders for numbers the store had nothing for, and trials it could not re-add (their
    old number, why)."""

    store: Path
    study: str | None = None
    recovered: list[int] = field(default_factory=list)
    placeholders: int = 0
    skipped: list[tuple[int | None, str]] = field(default_factory=list)
    note: str = ""


def store_of(journal: Path) -> Path | None:
    """`<results>/.store` for a journal at `<results>/.store/journals/<study>-<hash>.log`."""
    root = journal.resolve().parent.parent
    return root if journal.resolve().parent.name == "journals" and (root / "results").is_dir() else None


@dataclass
class _Evidence:
    """What the damaged file says about its own trials: every key it recorded, and every
    (number, values) it told COMPLETE."""

    keys: set[str] = field(default_factory=set)
    told: set[tuple[int, tuple[float, ...]]] = field(default_factory=set)


def _evidence(backup: Path) -> _Evidence:
    found = _Evidence()
    for _, _, _, record, _ in read_records(backup):
        if record is None:
            continue
        op = record["op_code"]
        if op == _CREATE_TRIAL:
            key = (record.get("system_attrs") or {}).get(KEY_ATTR)
        elif op == _SET_SYSTEM_ATTR:
            key = (record.get("system_attr") or {}).get(KEY_ATTR)
        else:
            key = None
            if op == _SET_STATE and record.get("state") == TrialState.COMPLETE and record.get("values"):
                found.told.add((int(record["trial_id"]), tuple(record["values"])))
        if isinstance(key, str):
            found.keys.add(key)
    return found


def _resolved_distributions(store: Path, study: str) -> dict[str, BaseDistribution]:
    resolved = store.parent / "studies" / study / "resolved.yaml"
    if store.name != ".store" or not resolved.is_file():
        return {}
    try:
        return distributions(load_study(resolved))
    except ConfigError:  # an unloadable file only means fewer known distributions
        return {}


def _kept_distributions(trials: list[FrozenTrial]) -> dict[str, BaseDistribution]:
    known: dict[str, BaseDistribution] = {}
    for t in trials:
        known.update(t.distributions)
    return known


def recover(journal: str | Path, backup: str | Path, store: str | Path) -> Recovery:
    """Re-add to the repaired `journal` the finished trials of its study that the trial store
    holds and the kept prefix lacks (see the module's docstring). `backup` is the damaged file."""
    journal, backup, store = Path(journal), Path(backup), Path(store)
    done = Recovery(store)
    backend = SingleWriterJournal(journal)
    try:
        storage = JournalStorage(backend)
        studies = storage.get_all_studies()
        if len(studies) != 1:
            done.note = f"the kept records hold {len(studies)} studies, not one: nothing re-added"
            return done
        study = studies[0]
        done.study = study.study_name
        evidence = _evidence(backup)
        lines = [r for r in map(TrialStore(store).get, TrialStore(store).keys()) if r is not None]
        ours = sorted(filter(None, (_ours(r, study.study_name, evidence) for r in lines)),
                      key=lambda r: (r.number is None, r.number or 0))
        _readd(storage, storage.get_study_id_from_name(study.study_name), ours, _resolved_distributions(store, study.study_name), done)
        backend.flush_to_disk()
    finally:
        backend.close()
    return done


def _ours(result: StoredResult, study: str, evidence: _Evidence) -> StoredResult | None:
    """The stored result as this study's trial, or None. A line another study wrote (with the
    same objective and parameters it answered this study's trial from the store) counts by
    its key, under the number the damaged journal told COMPLETE with its values (if one did:
    else at the end)."""
    if result.state != "COMPLETE" or not result.values:
        return None
    if result.study == study:
        return result if result.key in evidence.keys or (result.number, tuple(result.values)) in evidence.told else None
    if result.key not in evidence.keys:
        return None
    numbers = [n for n, values in evidence.told if values == tuple(result.values)]
    return replace(result, study=study, number=numbers[0] if len(numbers) == 1 else None)


def _readd(storage: JournalStorage, study_id: int, results: list[StoredResult],
           resolved: dict[str, BaseDistribution], done: Recovery) -> None:
    trials = storage.get_all_trials(study_id, deepcopy=False)
    kept = _kept_distributions(trials)
    finished = {t.system_attrs.get(KEY_ATTR) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    open_ = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)
             and not t.system_attrs.get(NOT_RUN_ATTR) and WARM_START_ATTR not in t.system_attrs]
    later: list[tuple[StoredResult, FrozenTrial]] = []
    n_trials = len(trials)
    for result in results:
        if result.key in finished:
            continue  # the prefix has it (or the store line is a duplicate of a kept trial's key)
        finished.add(result.key)
        dists = {p: kept.get(p) or resolved.get(p) for p in result.params}
        unknown = sorted(p for p, d in dists.items() if d is None)
        if unknown:
            done.skipped.append((result.number, f"distribution of {', '.join(unknown)} unknown"))
            continue
        try:
            trial = _finished(result, dists)  # type: ignore[arg-type]
        except ValueError as exc:  # a value outside the distribution the journal used
            done.skipped.append((result.number, str(exc).splitlines()[0]))
            continue
        target = _open_trial(open_, result)
        if target is not None:
            open_.remove(target)
            _finish_in_place(storage, trial_id_of(target), target, trial)
            done.recovered.append(target.number)
        elif result.number is not None and result.number >= n_trials:
            for _ in range(result.number - n_trials):
                storage.create_new_trial(study_id, _placeholder())
            done.placeholders += result.number - n_trials
            storage.create_new_trial(study_id, trial)
            n_trials = result.number + 1
            done.recovered.append(result.number)
        else:
            later.append((result, trial))
    for result, trial in later:  # its number is taken: at the end, under a new one
        storage.create_new_trial(study_id, trial)
        done.recovered.append(n_trials)
        n_trials += 1


def _open_trial(open_: list[FrozenTrial], result: StoredResult) -> FrozenTrial | None:
    """The prefix's unfinished trial this result belongs to: same key, or (its key record
    lost in the hole) same number and no conflicting parameter."""
    for t in open_:
        if t.system_attrs.get(KEY_ATTR) == result.key:
            return t
    for t in open_:
        if (KEY_ATTR not in t.system_attrs and t.number == result.number
                and all(result.params.get(p) == v for p, v in t.params.items())):
            return t
    return None


def _finished(result: StoredResult, dists: dict[str, BaseDistribution]) -> FrozenTrial:
    system_attrs = dict(result.system_attrs) | {KEY_ATTR: result.key, RECOVERED_ATTR: result.number}
    if result.duration_s is not None:
        system_attrs[DURATION_ATTR] = result.duration_s
    return optuna.trial.create_trial(state=TrialState.COMPLETE, values=result.values, params=result.params,
                                     distributions=dists, user_attrs=dict(result.user_attrs),
                                     system_attrs=system_attrs)


def _placeholder() -> FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.FAIL, system_attrs={NOT_RUN_ATTR: True, ERROR_ATTR: LOST_ERROR})


def _finish_in_place(storage: JournalStorage, trial_id: int, kept: FrozenTrial, trial: FrozenTrial) -> None:
    if kept.state == TrialState.WAITING:
        storage.set_trial_state_values(trial_id, TrialState.RUNNING)
    for name, value in trial.params.items():
        if name not in kept.params:
            dist = trial.distributions[name]
            storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
    for key, value in trial.user_attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in trial.system_attrs.items():
        storage.set_trial_system_attr(trial_id, key, value)
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, trial.values)


def describe(done: Recovery) -> str:
    """One line (two with skipped trials) for the CLI."""
    numbers = sorted(done.recovered)
    text = (f"recovered {len(numbers)} finished trials of study {done.study!r} from the trial store {done.store}"
            + (f" (numbers {_ranges(numbers)})" if numbers else "")
            + (f"; {done.placeholders} numbers between them had no stored result (marked not run)"
               if done.placeholders else "")
            + (f"; {done.note}" if done.note else ""))
    if done.skipped:
        text += "\n" + f"could not re-add {len(done.skipped)} stored trials: " + "; ".join(
            f"{n}: {why}" for n, why in done.skipped[:10])
    return text


def _ranges(numbers: list[int]) -> str:
    parts: list[str] = []
    for n in numbers:
        if parts and n == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{n}"
        else:
            parts.append(str(n))
    return ", ".join(parts)

