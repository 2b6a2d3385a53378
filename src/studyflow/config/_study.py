"""Study files: load with OmegaConf, validate into typed dataclasses, hash.

Every problem is raised as one :class:`ConfigError` line naming the file and the key, before
any cluster starts.
"""

from __future__ import annotations

import math
import re
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
from studyflow.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid", "qmc", "cmaes", "gp", "nsga2")
PRUNERS = ("none", "median", "percentile", "hyperband", "successive_halving")
DIRECTIONS = ("minimize", "maximize")
PARAM_TYPES = ("float", "int", "categorical")
SCHEDULING = ("async", "reproducible")
DEFAULT_REPRODUCIBLE_WINDOW = 8
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


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
    n_trials: int = 20
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


CLUSTER_MODES = ("local", "slurm", "address", "scheduler_file")


@dataclass
class ClusterConfig:
    """Where the trials run. `local`: a LocalCluster sized from the rule's threads (inside a
    SLURM job, the job's CPUs). `slurm`: dask-jobqueue SLURM jobs of `cores` single-threaded
    worker processes each, over TLS. `address`/`scheduler_file`: attach to a running cluster."""

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
    tls: bool = True  # slurm mode: certificates made for the run (Security.temporary())


@dataclass
class StudyConfig:
    """A validated study file. `name` is the file's stem unless given."""

    objective: str = "???"
    objective_version: Optional[str] = None  # else the objective module's source is hashed
    objective_args: dict[str, Any] = field(default_factory=dict)
    data: Optional[str] = None
    data_columns: list[str] = field(default_factory=list)  # checked before any cluster starts
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    direction: str = "minimize"
    directions: Optional[list[str]] = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    concurrency: Optional[int] = None
    prefetch: Optional[int] = None  # trials a loop holds beyond the one it runs; None: auto
    scheduling: str = "async"
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # parameters of the first trials
    warm_start: Optional[str] = None  # an earlier study's journal or results folder: its history
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.to_dict()))

    def config_hash(self) -> str:
        """Hash of everything in the resolved study (a Snakemake param: a change re-runs)."""
        data = self.to_dict()
        for key in ("source", "report", "cluster", "worker_resources"):
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
        for key in ("enqueue", "warm_start"):  # only when set: older journals keep their keys
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

    Raises:
        ConfigError: one line naming the file and the key that is wrong.
    """
    origin = None
    if isinstance(source, StudyConfig):  # re-validate, keeping where it came from
        origin, name = source.source, name or source.name
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
            raise ConfigError(label, _key(exc), _omegaconf_message(exc) + " (from --set)")
    try:
        cfg: StudyConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(label, _key(exc), _omegaconf_message(exc)) from exc
    cfg.name = name or cfg.name or default_name
    cfg.source = label
    validate_study(cfg, label)
    return cfg


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


def validate_study(cfg: StudyConfig, label: str) -> None:
    """Checks the typed config cannot express: ranges, names, choices."""

    def fail(key: str, msg: str) -> None:
        raise ConfigError(label, key, msg)

    if not cfg.name or not _SAFE_NAME.match(cfg.name):
        fail("name", f"study name {cfg.name!r} must match {_SAFE_NAME.pattern} (it names files)")
    if cfg.data is not None and not _SAFE_NAME.match(cfg.data):
        fail("data", f"dataset name {cfg.data!r} must match {_SAFE_NAME.pattern}")
    if ":" not in cfg.objective or cfg.objective.count(":") != 1:
        fail("objective", f"{cfg.objective!r} must be 'module:function'")
    for i, direction in enumerate(cfg.study_directions):
        if direction not in DIRECTIONS:
            key = f"directions.{i}" if cfg.directions else "direction"
            fail(key, f"{direction!r} is not one of {', '.join(DIRECTIONS)}")
    if cfg.sampler.name not in SAMPLERS:
        fail("sampler.name", f"{cfg.sampler.name!r} is not one of {', '.join(SAMPLERS)}")
    if cfg.pruner.name not in PRUNERS:
        fail("pruner.name", f"{cfg.pruner.name!r} is not one of {', '.join(PRUNERS)}")
    if cfg.scheduling not in SCHEDULING:
        fail("scheduling", f"{cfg.scheduling!r} is not one of {', '.join(SCHEDULING)}")
    budget = cfg.budget
    if budget.n_trials < 1:
        fail("budget.n_trials", f"must be at least 1, got {budget.n_trials}")
    for key in ("timeout_s", "trial_timeout_s"):
        value = getattr(budget, key)
        if value is not None and value <= 0:
            fail(f"budget.{key}", f"must be positive, got {value}")
    if budget.retries < 0:
        fail("budget.retries", f"must be 0 or more, got {budget.retries}")
    if budget.patience is not None and budget.patience < 1:
        fail("budget.patience", f"must be at least 1, got {budget.patience}")
    if cfg.cluster.mode not in CLUSTER_MODES:
        fail("cluster.mode", f"{cfg.cluster.mode!r} is not one of {', '.join(CLUSTER_MODES)}")
    if cfg.cluster.mode in ("address", "scheduler_file") and not getattr(cfg.cluster, cfg.cluster.mode):
        fail(f"cluster.{cfg.cluster.mode}", f"cluster.mode {cfg.cluster.mode} needs cluster.{cfg.cluster.mode}")
    if cfg.cluster.jobs < 1 or cfg.cluster.cores < 1:
        fail("cluster.jobs", "cluster.jobs and cluster.cores must be at least 1")
    if cfg.concurrency is not None and cfg.concurrency < 1:
        fail("concurrency", f"must be at least 1, got {cfg.concurrency}")
    if cfg.prefetch is not None and cfg.prefetch < 0:
        fail("prefetch", f"must be 0 or more (or left out for auto), got {cfg.prefetch}")
    for pname, spec in cfg.search_space.items():
        _validate_param(pname, spec, fail)
    _validate_enqueue(cfg, fail)
    if cfg.constraints is not None and not cfg.constraints.user_attr.strip():
        fail("constraints.user_attr", "must name the user attr holding the objective's constraints")
    if cfg.warm_start is not None and not cfg.warm_start.strip():
        fail("warm_start", "must be a journal file or a results folder results/studies/<name>")
    if cfg.scheduling == "reproducible":
        _check_reproducible(cfg, fail)
    if cfg.sampler.name == "grid":
        for pname, spec in cfg.search_space.items():
            if spec.type == "float" and spec.step is None:
                fail(f"search_space.{pname}.step", "the grid sampler needs a step for floats")


REPRODUCIBLE_ONLY = "scheduling: reproducible replays trials from the study file alone"


def _check_reproducible(cfg: StudyConfig, fail: Any) -> None:
    """What `scheduling: reproducible` cannot replay on another number of workers: a trial
    sampled define-by-run (its suggests interleave with other trials' asks), a pruner (it reads
    the intermediate values of whichever trials run beside it) and patience (which trials
    start before it stops the study depends on their timing)."""
    if not cfg.search_space:
        fail("search_space", f"empty, so every parameter is suggested define-by-run; {REPRODUCIBLE_ONLY}: "
             "declare the parameters here, or use scheduling: async")
    if cfg.pruner.name != "none":
        fail("pruner.name", f"{cfg.pruner.name!r} decides on timing-dependent intermediate values; "
             f"{REPRODUCIBLE_ONLY}: use pruner: {{name: none}} or scheduling: async")
    if cfg.budget.patience is not None:
        fail("budget.patience", f"which trials start before patience ends the study depends on timing; "
             f"{REPRODUCIBLE_ONLY}: leave it out or use scheduling: async")


def _validate_enqueue(cfg: StudyConfig, fail: Any) -> None:
    """Each enqueued trial is a mapping of parameter values that Optuna can fix: a value of a
    declared parameter must be one its distribution can hold (else the ask would fail on the
    server); names the file does not declare are left to the objective's own suggests."""
    for i, params in enumerate(cfg.enqueue):
        if not params:
            fail(f"enqueue.{i}", "an enqueued trial needs at least one parameter")
        for pname, value in params.items():
            key = f"enqueue.{i}.{pname}"
            if value is not None and not isinstance(value, (bool, int, float, str)):
                fail(key, f"must be a number, a string, a bool or null, got {value!r}")
            spec = cfg.search_space.get(pname)
            if spec is None:
                continue
            if spec.type == "categorical":
                if value not in (spec.choices or []):
                    fail(key, f"{value!r} is not one of the choices {spec.choices}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(key, f"must be a number for a {spec.type} parameter, got {value!r}")
            elif spec.type == "int" and not float(value).is_integer():
                fail(key, f"must be an integer for an int parameter, got {value!r}")


def _validate_param(pname: str, spec: ParamSpec, fail: Any) -> None:
    key = f"search_space.{pname}"
    if spec.type not in PARAM_TYPES:
        fail(f"{key}.type", f"{spec.type!r} is not one of {', '.join(PARAM_TYPES)}")
    if spec.type == "categorical":
        if not spec.choices:
            fail(f"{key}.choices", "a categorical parameter needs a non-empty list of choices")
        for attr in ("low", "high", "step"):
            if getattr(spec, attr) is not None:
                fail(f"{key}.{attr}", "not allowed for a categorical parameter")
        return
    if spec.choices is not None:
        fail(f"{key}.choices", f"only categorical parameters take choices, not {spec.type}")
    for attr in ("low", "high"):
        value = getattr(spec, attr)
        if value is None:
            fail(f"{key}.{attr}", f"missing (required for a {spec.type} parameter)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"{key}.{attr}", f"must be a number, got {value!r}")
        if spec.type == "int" and not float(value).is_integer():
            fail(f"{key}.{attr}", f"must be an integer for an int parameter, got {value!r}")
        if not math.isfinite(value):
            fail(f"{key}.{attr}", f"must be finite, got {value!r}")
    if spec.low > spec.high:
        fail(f"{key}.low", f"low ({spec.low}) > high ({spec.high})")
    if spec.log and spec.low <= 0:
        fail(f"{key}.low", f"a log-scaled parameter needs low > 0, got {spec.low}")
    if spec.step is not None:
        if isinstance(spec.step, bool) or not isinstance(spec.step, (int, float)) or spec.step <= 0:
            fail(f"{key}.step", f"must be a positive number, got {spec.step!r}")
        if spec.log and spec.type == "float":
            fail(f"{key}.step", "a float parameter cannot have both step and log")
        if spec.type == "int" and not float(spec.step).is_integer():
            fail(f"{key}.step", f"must be an integer for an int parameter, got {spec.step!r}")


@dataclass
class DatasetSpec:
    """Where a dataset comes from: a file `path`, or a `loader` ('module:function') and kwargs."""

    path: Optional[str] = None
    loader: Optional[str] = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def dataset_spec(name: str, raw: dict[str, Any], label: str) -> DatasetSpec:
    if not _SAFE_NAME.match(name):
        raise ConfigError(label, f"datasets.{name}", f"dataset name must match {_SAFE_NAME.pattern}")
    try:
        spec: DatasetSpec = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(DatasetSpec), OmegaConf.create(dict(raw)))
        )  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(label, f"datasets.{name}.{_key(exc)}", _omegaconf_message(exc))
    if (spec.path is None) == (spec.loader is None):
        raise ConfigError(label, f"datasets.{name}", "give exactly one of 'path' or 'loader'")
    return spec
