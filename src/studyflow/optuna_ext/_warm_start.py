"""`warm_start:` an earlier study's finished trials as the starting history of a new one: a
studyflow study's, or plain Optuna's from its journal file or storage URL (SQLite, say).

The driver reads them before any cluster starts, so a missing or unreadable source is one
`ConfigError` line naming `warm_start`, and sends them with the study. The server adds them
only to a new journal (`server._lifecycle._seed_new_study`), each marked with `studyflow:warm_start`
(its source journal and number), so the sampler learns from them while they stay out of the
new study's budget, counts, best trial and tables.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from typing import NoReturn

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import check_distribution_compatibility
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from studyflow._attrs import NOT_RUN_ATTR
from studyflow._attrs import WARM_START_ATTR
from studyflow.config import StudyConfig
from studyflow.errors import ConfigError
from studyflow.optuna_ext._space import distributions

_logger = logging.getLogger(__name__)
# Kept: Optuna's constraints ("constraints", "constraints:<name>"), which samplers read.
# Dropped: the earlier run's bookkeeping (worker, key, retries) and artifact records.
KEPT_SYSTEM_ATTRS = ("constraints",)  # prefixes


class ReadOnlyJournal(BaseJournalBackend):
    """An Optuna journal file read once and never written (Optuna's file backend creates the
    file and needs write access; a torn last line, from a crash mid-write, is left out)."""

    def __init__(self, path: Path) -> None:
        lines = path.read_bytes().split(b"\n")[:-1]  # the last piece is empty or torn
        self._logs = [json.loads(line) for line in lines]

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise PermissionError("a warm_start journal is only read")


def warm_trials(cfg: StudyConfig) -> list[FrozenTrial]:
    """The finished (COMPLETE or PRUNED) trials of the study `cfg.warm_start` names, marked:
    a studyflow results folder, an Optuna journal file, or an Optuna storage URL (the user's
    plain Optuna studies in SQLite, say), read only; `warm_start_study` picks one of several.

    Raises:
        ConfigError: the source is missing or unreadable, holds several studies and none is
            named, or its study has another number of objectives.
    """
    if cfg.warm_start is None:
        return []
    label = cfg.source or cfg.name or "<study>"

    def fail(message: str, key: str = "warm_start") -> NoReturn:
        raise ConfigError(label, key, message)

    if "://" in cfg.warm_start:
        storage, source = _rdb_storage(cfg.warm_start, fail)
        name = None
    else:
        journal, name = _journal_of(Path(cfg.warm_start).expanduser(), fail)
        storage, source = _journal_storage(journal, fail), str(journal)
    trials = _finished_trials(storage, source, cfg.warm_start_study or name, cfg.warm_start_study is not None,
                              len(cfg.study_directions), fail)
    space = distributions(cfg)
    dropped: set[str] = set()
    marked = [_marked(t, source, _misfits(t, space, dropped)) for t in trials]
    if dropped:
        _logger.warning("%s: warm_start %s: parameters %s have another kind, log scale or choices "
                        "there; their values are left out of the warm-start trials",
                        label, source, sorted(dropped))
    return marked


def _misfits(
    trial: FrozenTrial, space: dict[str, BaseDistribution], dropped: set[str]
) -> set[str]:
    """The trial's parameters whose distribution the study's space cannot take as the same
    parameter (another kind, log scale, or categorical choices): Optuna refuses to mix them in
    one study. Other ranges are fine. Their names are added to `dropped`."""
    misfits = set()
    for name, dist in trial.distributions.items():
        if name in space:
            try:
                check_distribution_compatibility(dist, space[name])
            except ValueError:
                misfits.add(name)
    dropped |= misfits
    return misfits


def _journal_of(path: Path, fail: Any) -> tuple[Path, str | None]:
    """The journal a `warm_start` path names and, for a results folder, its study's name. A
    folder's `best.json` names the journal as the run saw it; a moved results tree still finds
    it in its own `.store/journals/`."""
    if path.is_file():
        return path, None
    if not path.is_dir():
        fail(f"{path}: no such journal file or results folder")
    best = path / "best.json"
    try:
        info = json.loads(best.read_text())
        named = Path(info["journal"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"{best}: not a studyflow results folder's best.json naming a journal "
             f"({type(exc).__name__}: {exc})")
    for candidate in (named, path.parent.parent / ".store" / "journals" / named.name):
        if candidate.is_file():
            return candidate, info.get("study")
    fail(f"{best} names the journal {named}, which does not exist")


def _journal_storage(journal: Path, fail: Any) -> JournalStorage:
    try:
        return JournalStorage(ReadOnlyJournal(journal))
    except Exception as exc:  # not JSON lines, or not Optuna's records
        fail(f"{journal}: not a readable Optuna journal ({type(exc).__name__}: {exc})")


def _rdb_storage(url: str, fail: Any) -> tuple[optuna.storages.RDBStorage, str]:
    """Optuna's storage at `url`, opened to read (no table is created; a SQLite file that does
    not exist is refused, not made), and the URL to name it by, without its password."""
    from sqlalchemy.engine import make_url  # Optuna's own dependency, loaded only for this

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001  sqlalchemy's ArgumentError, for one
        fail(f"{url}: not a storage URL ({type(exc).__name__}: {exc})")
    source = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).is_file():
        fail(f"{source}: no such SQLite file {parsed.database}")
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True), source
    except Exception as exc:  # noqa: BLE001  a driver not installed, a server not reached, no tables
        fail(f"{source}: cannot open this Optuna storage ({type(exc).__name__}: {_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, and of what caused it (Optuna's StorageInternalError
    says only that a commit failed; its cause says "no such table: version_info")."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    cause = exc.__cause__ or exc.__context__
    return f"{line}; {type(cause).__name__}: {_first_line(cause)}" if cause is not None else line


def _finished_trials(
    storage: optuna.storages.BaseStorage, source: str, name: str | None, named: bool, n_objectives: int, fail: Any
) -> list[FrozenTrial]:
    """The study's finished trials: the one `name`d (`named`: by `warm_start_study`, which must
    exist), else the only one."""
    try:
        studies = {s.study_name: s for s in storage.get_all_studies()}
    except Exception as exc:  # noqa: BLE001  not Optuna's records, or not its tables
        fail(f"{source}: not a readable Optuna storage ({type(exc).__name__}: {_first_line(exc)})")
    if not studies:
        fail(f"{source}: holds no study")
    names = ", ".join(map(repr, sorted(studies)))
    if named and name not in studies:
        fail(f"{source} holds no study {name!r}; it holds {names}", "warm_start_study")
    if len(studies) > 1 and name not in studies:
        fail(f"{source} holds several studies ({names}): name one as warm_start_study", "warm_start_study")
    study = studies[name] if name in studies else next(iter(studies.values()))
    if len(study.directions) != n_objectives:
        fail(f"{source}: study {study.study_name!r} has {len(study.directions)} objective(s), "
             f"this study has {n_objectives}")
    study_id = storage.get_study_id_from_name(study.study_name)
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = storage.get_all_trials(study_id, deepcopy=False, states=states)
    return [t for t in finished if not t.system_attrs.get(NOT_RUN_ATTR)]


def _marked(trial: FrozenTrial, source: str, misfits: set[str]) -> FrozenTrial:
    """The trial as the new study's history: its outcome, parameters (but `misfits`), user
    attributes, constraints and times, and the mark."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k.startswith(KEPT_SYSTEM_ATTRS)}
    system_attrs[WARM_START_ATTR] = {"journal": source, "number": trial.number}
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=trial.values,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params={k: v for k, v in trial.params.items() if k not in misfits},
        distributions={k: v for k, v in trial.distributions.items() if k not in misfits},
        user_attrs=dict(trial.user_attrs),
        system_attrs=system_attrs,
        intermediate_values=dict(trial.intermediate_values),
        trial_id=-1,
    )
