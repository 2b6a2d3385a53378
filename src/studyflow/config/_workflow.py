"""The run-wide config (`config/config.yaml`): which studies, where their data comes from.

Snakemake's `common.smk` and `studyflow run` both read it through `WorkflowConfig`, so the
same study resolves the same way from either.
"""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from studyflow.config._matrix import Matrix
from studyflow.config._matrix import parse_matrix
from studyflow.config._study import DatasetSpec
from studyflow.config._study import StudyConfig
from studyflow.config._study import dataset_spec
from studyflow.config._study import load_study
from studyflow.errors import ConfigError

DEFAULT_CONFIG = "config/config.yaml"


@dataclass
class WorkflowConfig:
    studies: list[str]
    study_dir: str = "config/studies"
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    set: list[str] = field(default_factory=list)  # dot-list overrides for every study
    overrides: dict[str, list[str]] = field(default_factory=dict)  # {study: dot-list}
    cluster: dict[str, Any] = field(default_factory=dict)  # run-wide default for every study
    results: str = "results"  # prefix of every output of the workflow (and the store)
    logs: str = "logs"  # prefix of every job's log
    source: str = DEFAULT_CONFIG
    matrix: Matrix | None = None  # problems x methods: studies named <problem>-<method>

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = DEFAULT_CONFIG) -> WorkflowConfig:
        raw = dict(raw)
        studies = raw.get("studies") or []
        if isinstance(studies, str):
            studies = [studies]
        datasets = {
            name: dataset_spec(name, spec or {}, source)
            for name, spec in (raw.get("datasets") or {}).items()
        }
        overrides = {k: _as_list(v) for k, v in (raw.get("overrides") or {}).items()}
        study_dir = str(raw.get("study_dir", "config/studies"))
        matrix = parse_matrix(raw.get("matrix"), source, study_dir, set(datasets))
        for name in matrix.pairs if matrix else ():
            if name in studies:
                raise ConfigError(source, "studies", f"{name!r} is also a study of the matrix (<problem>-<method>)")
        return cls(
            studies=[str(s) for s in studies],
            study_dir=study_dir,
            datasets=datasets,
            set=_as_list(raw.get("set")),
            overrides=overrides,
            cluster=dict(raw.get("cluster") or {}),
            results=str(raw.get("results") or "results").rstrip("/"),
            logs=str(raw.get("logs") or "logs").rstrip("/"),
            source=source,
            matrix=matrix,
        )

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_CONFIG) -> WorkflowConfig:
        if not Path(path).is_file():
            return cls(studies=[], source=str(path))
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        return cls.from_dict(raw or {}, str(path))  # type: ignore[arg-type]

    def study_names(self) -> list[str]:
        """The listed studies, then the matrix's, problem by problem."""
        return [*self.studies, *(self.matrix.pairs if self.matrix else ())]

    def is_matrix_study(self, study: str) -> bool:
        return self.matrix is not None and study in self.matrix.pairs

    def study_file(self, study: str) -> Path:
        """A study's file; a matrix study's is written at load (`write_run_files`) under
        `<results>/.workflow/matrix/`, for its jobs to read."""
        if self.is_matrix_study(study):
            return Path(self.results) / ".workflow" / "matrix" / f"{study}.yaml"
        return Path(self.study_dir) / f"{study}.yaml"

    def study_overrides(self, study: str) -> list[str]:
        return [*self.set, *self.overrides.get(study, [])]

    def load(self, study: str) -> StudyConfig:
        if self.is_matrix_study(study):
            assert self.matrix is not None
            try:
                return load_study(self.matrix.study_dict(study), self.study_overrides(study), name=study,
                                  defaults=self.study_defaults())
            except ConfigError as exc:
                raise ConfigError(f"{self.source}: matrix study {study}", exc.key, exc.message) from None
        path = self.study_file(study)
        if not path.is_file():
            raise ConfigError(self.source, "studies", f"study {study!r} has no file {path}")
        cfg = load_study(path, self.study_overrides(study), defaults=self.study_defaults())
        if cfg.name != study:  # the rules' outputs are named after the file the config lists
            raise ConfigError(str(path), "name", f"{cfg.name!r} is not the file's name {study!r}, by which "
                              "config.yaml lists the study and the workflow names its outputs; drop name: "
                              "or rename the file")
        self.check_dataset(cfg)
        return cfg

    def load_all(self) -> dict[str, StudyConfig]:
        """Every study the workflow runs, by name, each resolved and validated: the one place
        the Snakefile gets its studies from. An override naming no study (of the folder or the
        matrix, selected or not) is a typo: it would be ignored, saying nothing."""
        for name in self.overrides:
            if not (self.is_matrix_study(name) or self.study_file(name).is_file()):
                raise ConfigError(self.source, f"overrides.{name}",
                                  f"no study {name} (no file {self.study_file(name)}, and not of the matrix)")
        return {name: self.load(name) for name in self.study_names()}

    def used_datasets(self, studies: dict[str, StudyConfig]) -> list[str]:
        return sorted({cfg.data for cfg in studies.values() if cfg.data is not None})

    def run_config(self) -> dict[str, Any]:
        """What a job's `studyflow optimize --config` needs of this run's config (datasets and
        the run-wide cluster), so a job sees `--config` overrides and a module's own config."""
        return {
            "studies": list(self.studies),
            "study_dir": self.study_dir,
            "datasets": {name: asdict(spec) for name, spec in self.datasets.items()},
            "cluster": dict(self.cluster),
        }

    def study_defaults(self) -> dict[str, Any]:
        return {"cluster": self.cluster} if self.cluster else {}

    def check_dataset(self, cfg: StudyConfig) -> None:
        if cfg.data is not None and cfg.data not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise ConfigError(
                cfg.source or "<study>", "data",
                f"dataset {cfg.data!r} is not defined under 'datasets' in {self.source} (known: {known})",
            )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def job_runtime_minutes(cfg: StudyConfig, default: int = 60) -> int:
    """A SLURM runtime for a study's optimize job: its time budget plus a margin for start-up
    and writing outputs, else `default` minutes; with SLURM worker jobs, at least their
    walltime (the study can run as long as its workers do)."""
    minutes = default if cfg.budget.timeout_s is None else int(cfg.budget.timeout_s / 60 * 1.2) + 10
    if cfg.cluster.mode == "slurm":
        minutes = max(minutes, walltime_minutes(cfg.cluster.walltime) + 10)
    return minutes


def walltime_minutes(walltime: str) -> int:
    """SLURM's time formats ("MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM[:SS]") in minutes."""
    days, _, clock = walltime.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, mins = parts[0], (parts[1] if len(parts) > 1 else 0)
    elif len(parts) == 3:
        hours, mins = parts[0], parts[1]
    else:
        hours, mins = 0, parts[0]
    return int(days or 0) * 1440 + hours * 60 + mins


def optimize_job_gpus(cfg: StudyConfig) -> int:
    """GPUs for a study's optimize job: those its local one-worker-per-GPU cluster names
    (`cluster.gpus`, a list), which the SLURM executor asks for (`gpu` resource: `--gpus`);
    none else (`gpus: auto` takes what the job was given: ask for them in the profile)."""
    gpus = cfg.cluster.gpus
    return len(gpus) if cfg.cluster.mode == "local" and isinstance(gpus, list) else 0


def optimize_job_threads(cfg: StudyConfig) -> int | None:
    """CPUs for a study's optimize job: one where the workers run elsewhere (SLURM jobs, an
    attached cluster), else its local workers' threads: the study's concurrency times
    `cluster.trial_threads`, or None for every core the run was given."""
    if cfg.cluster.mode != "local":
        return 1
    return None if cfg.concurrency is None else cfg.concurrency * cfg.cluster.trial_threads


def optimize_cores_unset(study: str) -> str:
    """What to set when a study's optimize job cannot know its CPUs (`optimize_job_threads`
    None, and a run on an executor without --cores)."""
    return (f"study {study} sets no concurrency, so its optimize job books --cores CPUs, which this run does not "
            "set: pass --cores N (with an executor such as SLURM's, the most CPUs one job books; profiles/slurm "
            "sets 8), or set the study's concurrency")


def optimize_job_workers(cfg: StudyConfig, threads: int) -> int:
    """Worker processes for an optimize job given `threads` cores: one per `trial_threads`."""
    return max(1, threads // cfg.cluster.trial_threads)
