"""What a run leaves: where its files live (`ResultsLayout`), and the finished study
(`StudyResult`) with its trials table, best trial(s) and outputs."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from studyflow import outputs
from studyflow._hashing import sha256_text
from studyflow._io import write_json
from studyflow._io import write_text
from studyflow.config import StudyConfig
from studyflow.outputs import IMPORTANCES_FILE
from studyflow.server import best_of

if TYPE_CHECKING:  # pandas and pyarrow load where a table is built or read, not at start
    import pandas as pd
    import pyarrow as pa


@dataclass
class ResultsLayout:
    """Where a run's files live, relative to one results folder."""

    root: Path

    def data(self, dataset: str) -> Path:
        return self.root / "data" / f"{dataset}.parquet"

    def study_dir(self, study: str) -> Path:
        return self.root / "studies" / study

    @property
    def store(self) -> Path:
        return self.root / ".store"

    def journal(self, cfg: StudyConfig, key_base: str, strategy: str = "") -> Path:
        """One journal per study identity, objective code version and data version (and
        `strategy`: the code of a user's own sampler or pruner, `strategy_fingerprint`)."""
        digest = sha256_text(cfg.identity_hash() + key_base + strategy)[:16]
        return self.store / "journals" / f"{cfg.name}-{digest}.log"


@dataclass
class StudyResult:
    """A finished study: its trials table, its best trial(s), and the Optuna study on demand.
    `table` is the trials as Arrow, what `write` puts in trials.parquet; `trials` is the same
    as a DataFrame, made on first use (the CLI never loads pandas)."""

    config: StudyConfig
    table: pa.Table
    journal: Path
    wall_time_s: float
    workers: int
    stop_reason: str | None
    data_sha256: str | None = None
    best_trials: dict[str, Any] = field(default_factory=dict)  # as `best_of` gives them
    importances: dict[str, Any] | None = None  # the card's, when a worker computed them cheaply
    _study: optuna.Study | None = field(default=None, repr=False, compare=False)
    _trials: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def trials(self) -> pd.DataFrame:
        """The trials table (see `outputs.trials_table`) as a DataFrame, as trials.parquet reads."""
        if self._trials is None:
            self._trials = self.table.to_pandas()
        return self._trials

    @property
    def study(self) -> optuna.Study:
        """The Optuna study, read from its journal on first use: the table and `best()` come
        from the server, so a run that only writes its outputs never replays the journal."""
        if self._study is None:
            self._study = load_journal(self.config, self.journal)
        return self._study

    def best(self) -> dict[str, Any]:
        """What `best.json` holds."""
        out: dict[str, Any] = {
            "study": self.config.name,
            "directions": self.config.study_directions,
            **({"metric_names": self.config.metric_names} if self.config.metric_names else {}),
            "n_trials": self.config.budget.n_trials,
            "stop_reason": self.stop_reason,
            "wall_time_s": round(self.wall_time_s, 3),
            "workers": self.workers,
            "data_sha256": self.data_sha256,
            "journal": str(self.journal),
            "config_hash": self.config.config_hash(),
            "versions": {p: version(p) for p in ("studyflow", "optuna", "distributed")},
        }
        return out | (self.best_trials or best_of(self.study))

    def write(self, out_dir: str | Path) -> None:
        """Write trials.parquet, best.json and resolved.yaml, each atomically, and the card's
        parameter importances when there are some (else none from an earlier run is left)."""
        out = Path(out_dir)
        if self.importances is not None:
            write_json(out / IMPORTANCES_FILE, self.importances)
        else:
            (out / IMPORTANCES_FILE).unlink(missing_ok=True)
        outputs.write_table(self.table, out / "trials.parquet")
        write_json(out / "best.json", self.best())
        write_text(out / "resolved.yaml", self.config.to_yaml())


def load_journal(cfg: StudyConfig, journal: Path) -> optuna.Study:
    return optuna.load_study(study_name=cfg.name, storage=JournalStorage(JournalFileBackend(str(journal))))
