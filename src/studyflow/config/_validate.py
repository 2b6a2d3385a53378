"""A study file's checks that its typed dataclasses cannot express: ranges, names, choices,
and what `scheduling: reproducible` cannot replay. Each failure is one `ConfigError` line naming
the file and the key."""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
from typing import TYPE_CHECKING
from typing import Any

from studyflow.errors import ConfigError

if TYPE_CHECKING:
    from studyflow.config._study import ParamSpec
    from studyflow.config._study import StudyConfig

SAMPLERS = ("tpe", "random", "grid", "qmc", "cmaes", "gp", "nsga2", "nsga3", "bruteforce")
PRUNERS = ("none", "median", "percentile", "hyperband", "successive_halving", "threshold", "wilcoxon")
CLASS_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$")  # any other: 'module:Class'
DIRECTIONS = ("minimize", "maximize")
PARAM_TYPES = ("float", "int", "categorical")
SCHEDULING = ("async", "reproducible")
CLUSTER_MODES = ("local", "slurm", "address", "scheduler_file")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # names files: no path separators
# What a SLURM job script may hold: each field lands in an `#SBATCH` line that a shell reads,
# so no spaces, quotes, `;`, `$`, backticks or newlines.
JOB_FIELDS = {
    "queue": re.compile(r"^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$"),  # a partition, or a list
    "account": re.compile(r"^[A-Za-z0-9_.-]+$"),
    "memory": re.compile(r"^[0-9]+(\.[0-9]+)? ?[A-Za-z]{0,3}$"),  # 16GB, 2 GiB
    "walltime": re.compile(r"^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$"),  # [days-]hh[:mm[:ss]]
}
DIRECTIVE = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*([= ][A-Za-z0-9_.,:=/@%+-]+)?$")  # --gres=gpu:1
TLS_FILES = ("tls_ca_file", "tls_cert", "tls_key")


def validate_study(cfg: StudyConfig, label: str) -> None:
    """Checks the typed config cannot express: ranges, names, choices."""

    def fail(key: str, msg: str) -> None:
        raise ConfigError(label, key, msg)

    if not cfg.name or not SAFE_NAME.match(cfg.name):
        fail("name", f"study name {cfg.name!r} must match {SAFE_NAME.pattern} (it names files)")
    if cfg.data is not None and not SAFE_NAME.match(cfg.data):
        fail("data", f"dataset name {cfg.data!r} must match {SAFE_NAME.pattern}")
    if ":" not in cfg.objective or cfg.objective.count(":") != 1:
        fail("objective", f"{cfg.objective!r} must be 'module:function'")
    module, _, attr = cfg.objective.partition(":")
    if module.endswith(".py") or "/" in module or "\\" in module:  # a file's path, as a shell names it
        dotted = ".".join(p for p in module.removesuffix(".py").replace("\\", "/").split("/") if p not in ("", "."))
        fail("objective", f"{cfg.objective!r} names a file; name its module, as Python imports it from the study "
                          f"file's folder or the working directory: '{dotted}:{attr}'")
    if cfg.directions and cfg.direction != "minimize":  # (the default: resolved.yaml writes it beside directions)
        fail("direction", f"{cfg.direction!r} beside directions: {list(cfg.directions)}; set only one of "
                          "direction and directions (as Optuna's create_study asks)")
    for i, direction in enumerate(cfg.study_directions):
        if direction not in DIRECTIONS:
            key = f"directions.{i}" if cfg.directions else "direction"
            fail(key, f"{direction!r} is not one of {', '.join(DIRECTIONS)}")
    names = cfg.metric_names
    if names is not None:
        if len(names) != len(cfg.study_directions):
            fail("metric_names", f"{len(names)} name(s) for {len(cfg.study_directions)} objective(s): one per direction")
        if not all(isinstance(n, str) and n for n in names):
            fail("metric_names", f"every name must be a non-empty string, got {list(names)!r}")
        if len(set(names)) != len(names):
            fail("metric_names", f"the names must differ, got {list(names)!r}")
    if cfg.sampler.name not in SAMPLERS and not CLASS_PATH.match(cfg.sampler.name):
        fail("sampler.name", f"{cfg.sampler.name!r} is not one of {', '.join(SAMPLERS)}, nor a 'module:Class'")
    if cfg.pruner.name not in PRUNERS and not CLASS_PATH.match(cfg.pruner.name):
        fail("pruner.name", f"{cfg.pruner.name!r} is not one of {', '.join(PRUNERS)}, nor a 'module:Class'")
    if cfg.pruner.name != "none" and len(cfg.study_directions) > 1:
        fail("pruner.name", f"{cfg.pruner.name!r} on a study of several objectives: Optuna prunes single-objective "
                            "studies only (Trial.report raises for several); use pruner: {name: none}")
    if cfg.scheduling not in SCHEDULING:
        fail("scheduling", f"{cfg.scheduling!r} is not one of {', '.join(SCHEDULING)}")
    budget = cfg.budget
    if budget.n_trials is not None and budget.n_trials < 1:
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
    gpus = cfg.cluster.gpus
    if gpus is not None:
        if cfg.cluster.mode != "local":
            fail("cluster.gpus", f"only mode: local starts one worker per GPU, not mode: {cfg.cluster.mode}")
        ids_ok = isinstance(gpus, list) and gpus and all(
            isinstance(g, (int, str)) and not isinstance(g, bool) for g in gpus)
        if gpus != "auto" and not ids_ok:
            fail("cluster.gpus", f"must be a non-empty list of GPU ids or 'auto', got {gpus!r}")
    adapt = cfg.cluster.adapt
    if adapt is not None:
        if cfg.cluster.mode != "slurm":
            fail("cluster.adapt", f"only mode: slurm adapts its size, not mode: {cfg.cluster.mode}")
        if set(adapt) - {"minimum", "maximum"} or not 0 <= adapt.get("minimum", 0) <= adapt.get("maximum", 0) \
                or adapt.get("maximum", 0) < 1:
            fail("cluster.adapt", f"must be {{minimum: m, maximum: n}} with 0 <= m <= n and n >= 1, got {dict(adapt)}")
    check_job_fields(cfg.cluster, fail)
    _validate_tls(cfg.cluster, fail)
    if cfg.cluster.jobs < 1 or cfg.cluster.cores < 1:
        fail("cluster.jobs", "cluster.jobs and cluster.cores must be at least 1")
    if cfg.cluster.trial_threads < 1:
        fail("cluster.trial_threads", f"must be at least 1, got {cfg.cluster.trial_threads}")
    if cfg.cluster.trial_threads != 1 and cfg.cluster.mode not in ("local", "slurm"):
        fail("cluster.trial_threads", f"sets the workers studyflow starts (mode: local or slurm); those of "
                                      f"a cluster attached to (mode: {cfg.cluster.mode}) keep their own")
    if cfg.concurrency is not None and cfg.concurrency < 1:
        fail("concurrency", f"must be at least 1, got {cfg.concurrency}")
    if cfg.prefetch is not None and cfg.prefetch < 0:
        fail("prefetch", f"must be 0 or more (or left out for auto), got {cfg.prefetch}")
    for pname, spec in cfg.search_space.items():
        _validate_param(pname, spec, fail)
    _validate_enqueue(cfg, fail)
    _validate_code(cfg, fail)
    if cfg.constraints is not None and not cfg.constraints.user_attr.strip():
        fail("constraints.user_attr", "must name the user attr holding the objective's constraints")
    if cfg.warm_start is not None and not cfg.warm_start.strip():
        fail("warm_start", "must be a journal file, a results folder results/studies/<name> or an Optuna storage URL")
    if cfg.warm_start_study is not None and cfg.warm_start is None:
        fail("warm_start_study", "names a study of warm_start, which is not set")
    if cfg.scheduling == "reproducible":
        _check_reproducible(cfg, fail)
    if cfg.sampler.name == "grid":
        if not cfg.search_space:
            fail("search_space", "the grid sampler runs the points of the space declared here: declare each "
                 "parameter's values (type, low, high, step; or choices)")
        for pname, spec in cfg.search_space.items():
            if spec.type == "float" and spec.step is None:
                fail(f"search_space.{pname}.step", "the grid sampler needs a step for floats")


def check_job_fields(cluster: Any, fail: Any) -> None:
    """The SLURM job script's fields match a strict pattern (they reach `sbatch`'s shell)."""
    for key, pattern in JOB_FIELDS.items():
        value = getattr(cluster, key)
        if value is not None and not pattern.fullmatch(str(value)):
            fail(f"cluster.{key}", f"{value!r} must match {pattern.pattern} (it goes into the job script)")
    for i, directive in enumerate(cluster.job_extra_directives):
        if not DIRECTIVE.fullmatch(str(directive)):
            fail(f"cluster.job_extra_directives.{i}",
                 f"{directive!r} must match {DIRECTIVE.pattern} (it goes into the job script)")


def _validate_tls(cluster: Any, fail: Any) -> None:
    """TLS files name readable files, all three together, for an attached cluster only."""
    given = [key for key in TLS_FILES if getattr(cluster, key)]
    if not given:
        return
    if cluster.mode not in ("address", "scheduler_file"):
        fail(f"cluster.{given[0]}", f"only an attached cluster (mode: address or scheduler_file) takes "
             f"TLS files; mode: {cluster.mode} makes its own certificates")
    for key in TLS_FILES:
        value = getattr(cluster, key)
        if not value:
            fail(f"cluster.{key}", f"missing: {', '.join(TLS_FILES)} go together")
        if not os.path.isfile(os.path.expanduser(value)):
            fail(f"cluster.{key}", f"{value}: no such file")


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


def _validate_code(cfg: StudyConfig, fail: Any) -> None:
    """Every name in `code.packages` is an installed distribution here, the driver's
    environment, where its version is read into the trial keys."""
    for name in cfg.code.packages:
        if not name or not name.strip():
            fail("code.packages", "a package name is empty")
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            fail("code.packages", f"{name!r} is not an installed distribution (importlib.metadata cannot find it)")


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
        odd = [c for c in spec.choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if odd:  # Optuna's samplers hash choices, and its storages keep no other kind
            fail(f"{key}.choices", f"each choice must be null, a bool, a number or a string, got {odd[0]!r}; "
                                   "name compound choices by strings and map them in the objective")
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
        if spec.log and spec.type == "int" and spec.step != 1:
            fail(f"{key}.step", f"a log-scaled int parameter takes step 1 only (Optuna's rule), got {spec.step!r}")
        if spec.high > spec.low and spec.step > spec.high - spec.low:
            fail(f"{key}.step", f"{spec.step!r} is more than the range {spec.low}..{spec.high}: "
                 "the parameter would take one value")

