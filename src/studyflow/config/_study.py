"""Study files: load with OmegaConf into typed dataclasses, validate (`_validate`), hash.

Every problem is raised as one :class:`ConfigError` line naming the file and the key, before
any cluster starts.
"""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from studyflow._hashing import canonical_json
from studyflow._hashing import sha256_text
from studyflow.config._validate import SAFE_NAME
from studyflow.config._validate import validate_study
from studyflow.errors import ConfigError

DEFAULT_REPRODUCIBLE_WINDOW = 8


@dataclass
class ParamSpec:
    """One search-space entry: `float`/`int` with `low`/`high`, or `categorical` with `choices`."""

    type: str = "float"
    low: Optional[Any] = None
    high: Optional[Any] = None
    log: bool = False
    step: Optional[Any] = None
    choices: Optional[list[Any]] = None


@dataclass
class SamplerConfig:
    name: str = "tpe"
    seed: Optional[int] = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrunerConfig:
    name: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BudgetConfig:
    n_trials: Optional[int] = 20  # None: no limit, as optimize(timeout=...) (timeout_s, patience, ...)
    timeout_s: Optional[float] = None
    trial_timeout_s: Optional[float] = None
    retries: int = 1
    max_failures: Optional[int] = None
    patience: Optional[int] = None


@dataclass
class ConstraintsConfig:
    """`constraints: {user_attr: c}`: after the objective returns, its user attr `c` (a number
    or a list of numbers; <= 0 is feasible) becomes the trial's constraints before the tell, as
    Optuna's `constraints_func` reading that user attr would make them."""

    user_attr: str = "???"


@dataclass
class ClusterConfig:
    """Where the trials run. `local`: a LocalCluster sized from the rule's threads (inside a
    SLURM job, the job's CPUs). `slurm`: dask-jobqueue SLURM jobs of `cores` single-threaded
    worker processes each. `address`/`scheduler_file`: attach to a running cluster. `local` and
    `slurm` speak TLS with certificates made for the run (`tls: false`: plain TCP, which any
    process that reaches the port can use); attaching takes the cluster's CA and a client
    certificate and key (`tls_ca_file`, `tls_cert`, `tls_key`), else a standing cluster's
    `<scheduler_file>.tls`."""

    mode: str = "local"
    address: Optional[str] = None
    scheduler_file: Optional[str] = None
    jobs: int = 2
    cores: int = 1
    memory: str = "2GB"
    walltime: str = "01:00:00"
    queue: Optional[str] = None
    account: Optional[str] = None
    job_extra_directives: list[str] = field(default_factory=list)
    tls: bool = True  # local/slurm mode: certificates made for the run (Security.temporary())
    tls_ca_file: Optional[str] = None  # address/scheduler_file mode: PEM files of the cluster's
    tls_cert: Optional[str] = None  # CA, and of this client's certificate and key
    tls_key: Optional[str] = None
    # local mode: one worker per GPU id (a list, or "auto": CUDA_VISIBLE_DEVICES or nvidia-smi),
    # each with CUDA_VISIBLE_DEVICES set to its id and the Dask resource GPU=1
    gpus: Optional[Any] = None
    # slurm mode: {minimum: 0, maximum: N} jobs, asked for while trials remain (dask-jobqueue's
    # adapt) instead of `jobs` fixed ones
    adapt: Optional[dict[str, int]] = None
    # BLAS/OpenMP (and PyTorch) threads each worker process, so each running trial, gets: a
    # local job books concurrency x trial_threads cores, a SLURM job cores x trial_threads CPUs
    trial_threads: int = 1

    def max_slots(self) -> int | None:
        """Worker slots an adaptive SLURM cluster may grow to (None: not adaptive)."""
        return None if self.adapt is None else int(self.adapt.get("maximum", self.jobs)) * self.cores


@dataclass
class CodeConfig:
    """`code: {packages: [scikit-learn]}`: libraries whose installed versions (importlib.metadata,
    read by the driver) join the objective's code identity in every trial key."""

    packages: list[str] = field(default_factory=list)


@dataclass
class StudyConfig:
    """A validated study file. `name` is the file's stem unless given."""

    objective: str = "???"
    objective_version: Optional[str] = None  # else the objective's project source is hashed
    code: CodeConfig = field(default_factory=CodeConfig)  # library versions in the trial keys
    objective_args: dict[str, Any] = field(default_factory=dict)
    data: Optional[str] = None
    data_columns: list[str] = field(default_factory=list)  # checked before any cluster starts
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    direction: str = "minimize"
    directions: Optional[list[str]] = None
    metric_names: Optional[list[str]] = None  # one per objective, as `study.set_metric_names`
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    concurrency: Optional[int] = None
    prefetch: Optional[int] = None  # trials a loop holds beyond the one it runs; None: auto
    scheduling: str = "async"
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # parameters of the first trials
    warm_start: Optional[str] = None  # an earlier study's journal, results folder or Optuna storage URL
    warm_start_study: Optional[str] = None  # the study's name there, where it holds several
    constraints: Optional[ConstraintsConfig] = None  # a user attr read as the trial's constraints
    report: dict[str, Any] = field(default_factory=dict)  # report settings: never re-run optimize
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # where, not what: not hashed
    worker_resources: dict[str, float] = field(default_factory=dict)  # e.g. {GPU: 1}: not hashed
    name: Optional[str] = None
    source: Optional[str] = None  # the file it came from; filled in by load_study

    @property
    def window(self) -> int | None:
        """Reproducible scheduling's window c (the study's concurrency, 8 if unset)."""
        if self.scheduling != "reproducible":
            return None
        return self.concurrency or DEFAULT_REPRODUCIBLE_WINDOW

    @property
    def study_directions(self) -> list[str]:
        return list(self.directions) if self.directions else [self.direction]

    @property
    def value_columns(self) -> list[str]:
        """The trials table's value columns, named as Optuna's `trials_dataframe` names them:
        `value` or `values_0`, ...; with `metric_names`, `value_<name>` or `values_<name>`, ..."""
        names = self.metric_names
        if len(self.study_directions) == 1:
            return [f"value_{names[0]}" if names else "value"]
        return [f"values_{name}" for name in (names or range(len(self.study_directions)))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.to_dict()))

    def config_hash(self) -> str:
        """Hash of everything in the resolved study (a Snakemake param: a change re-runs)."""
        data = self.to_dict()
        for key in ("source", "report", "cluster", "worker_resources"):
            data.pop(key)
        for key in ("warm_start_study", "metric_names"):  # later keys: unset, they leave earlier hashes as they were
            if data[key] is None:
                data.pop(key)
        return _hash(data)

    def identity_hash(self) -> str:
        """Hash of what defines the trials (not the budget); with the objective's code version
        and the data's sha256 (see `driver`) it keys the study's journal.

        Raising `n_trials` continues the same journal; changing the objective, its settings,
        the data, the space, the directions, the sampler or the scheduling starts a new one.
        """
        data = self.to_dict()
        keep = ("objective", "objective_version", "objective_args", "data", "search_space",
                "sampler", "pruner", "scheduling")
        ident = {k: data[k] for k in keep}
        ident["directions"] = self.study_directions
        if data["constraints"] is not None:  # only when set: older journals keep their keys
            ident["constraints"] = data["constraints"]
        for key in ("enqueue", "warm_start", "warm_start_study"):  # only when set: older journals keep their keys
            if data[key]:
                ident[key] = data[key]
        return _hash(ident)


def _hash(data: dict[str, Any]) -> str:
    return sha256_text(canonical_json(data))[:16]


def load_study(
    source: str | Path | dict[str, Any] | StudyConfig,
    overrides: list[str] | None = None,
    name: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> StudyConfig:
    """Load a study file (or a dict) over `defaults` (e.g. a run-wide `cluster:` section),
    apply OmegaConf dot-list overrides, validate.

    A `StudyConfig` this returned, unchanged since and given with no overrides, defaults or
    other name, is returned as is: a process loads and validates its study file once and
    passes the result down (the CLI to `optimize`). Any other `StudyConfig` is re-validated.

    Raises:
        ConfigError: one line naming the file and the key that is wrong.
    """
    origin = None
    if isinstance(source, StudyConfig):
        if not overrides and not defaults and name in (None, source.name) and _is_validated(source):
            return source
        origin, name = source.source, name or source.name  # re-validate, keeping its origin
        source = {k: v for k, v in source.to_dict().items() if k != "source"}
    label = str(source) if isinstance(source, (str, Path)) else (origin or "<study>")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(label, "", "study file not found")
        try:
            raw = OmegaConf.load(path)
        except Exception as exc:  # yaml errors carry line numbers in their message
            raise ConfigError(label, "", f"not valid YAML: {_one_line(exc)}") from exc
        default_name = path.stem
    else:
        raw = OmegaConf.create(dict(source))
        default_name = name or "study"
    try:
        merged = OmegaConf.merge(OmegaConf.structured(StudyConfig), defaults or {}, raw)
    except OmegaConfBaseException as exc:
        raise ConfigError(label, _key(exc), _omegaconf_message(exc)) from exc
    except TypeError as exc:  # OmegaConf's, for a list where a mapping belongs or the reverse
        raise ConfigError(label, _mismatched_key(raw), f"wrong type ({_one_line(exc)})") from exc
    if overrides:
        try:
            dotlist = OmegaConf.from_dotlist(list(overrides))
        except Exception as exc:
            raise ConfigError(label, "--set", f"bad override {overrides}: {_one_line(exc)}")
        try:
            merged = OmegaConf.merge(merged, dotlist)
        except OmegaConfBaseException as exc:
            raise ConfigError(label, _key(exc), _omegaconf_message(exc) + _dotted_name_hint(merged, overrides)
                              + " (from --set)")
    try:
        cfg: StudyConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(label, _key(exc), _omegaconf_message(exc)) from exc
    if not (name or cfg.name) and not SAFE_NAME.match(default_name):
        raise ConfigError(label, "name", f"the study is named after its file, {default_name!r}, which must match "
                                         f"{SAFE_NAME.pattern} (it names files): rename the file or set `name:`")
    cfg.name = name or cfg.name or default_name
    cfg.source = label
    validate_study(cfg, label)
    setattr(cfg, _VALIDATED, _fingerprint(cfg))
    return cfg


def _dotted_name_hint(merged: Any, overrides: list[str]) -> str:
    """How to override a parameter whose name has dots (`model.lr`), which a dotted path
    splits: OmegaConf's brackets."""
    names = [str(n) for n in (merged.get("search_space") or {}) if "." in str(n)]
    for override in overrides:
        key, _, value = override.partition("=")
        for name in names:
            if key.startswith(f"search_space.{name}."):
                return f"; a name with dots takes brackets: search_space[{name}]{key[len('search_space.' + name):]}={value}"
    return ""


# Set on each StudyConfig `load_study` returns: what it held when validated. An attribute, not
# a field, so it is in no study file, hash or resolved.yaml.
_VALIDATED = "_studyflow_validated_as"


def _fingerprint(cfg: StudyConfig) -> str:
    return canonical_json(cfg.to_dict())


def _is_validated(cfg: StudyConfig) -> bool:
    """Whether `load_study` returned `cfg` and nothing in it changed since (a changed field
    must be checked again)."""
    return getattr(cfg, _VALIDATED, None) == _fingerprint(cfg)


def _mismatched_key(raw: Any) -> str:
    """The top-level key holding a list where the study file takes a mapping, or the reverse."""
    defaults = StudyConfig()
    for key, value in raw.items():
        default = getattr(defaults, str(key), None)
        if isinstance(default, (list, dict)) and OmegaConf.is_config(value):
            if OmegaConf.is_list(value) != isinstance(default, list):
                return str(key)
    return ""


def _key(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "full_key", "") or "")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__name__ == "ConfigKeyError":
        return f"unknown key ({first})"
    if type(exc).__name__ == "MissingMandatoryValue":
        return "missing (required)"
    return f"wrong type ({first})"


@dataclass
class DatasetSpec:
    """Where a dataset comes from: a file `path`, or a `loader` ('module:function') and kwargs."""

    path: Optional[str] = None
    loader: Optional[str] = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def dataset_spec(name: str, raw: dict[str, Any], label: str) -> DatasetSpec:
    if not SAFE_NAME.match(name):
        raise ConfigError(label, f"datasets.{name}", f"dataset name must match {SAFE_NAME.pattern}")
    try:
        spec: DatasetSpec = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(DatasetSpec), OmegaConf.create(dict(raw)))
        )  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(label, f"datasets.{name}.{_key(exc)}", _omegaconf_message(exc))
    if (spec.path is None) == (spec.loader is None):
        raise ConfigError(label, f"datasets.{name}", "give exactly one of 'path' or 'loader'")
    return spec
