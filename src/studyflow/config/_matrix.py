"""The study matrix (`matrix:` in the workflow config): problems x methods -> plain studies.

A method is a study template (an optional base study file plus study-file keys inline: search
space, sampler, pruner, budget, worker_resources...); a problem is a dataset plus
`objective_args` and dot-list overrides, and optionally a reference loader run once per
problem. Each pair becomes a study named `<problem>-<method>` before Snakemake builds its DAG,
so every other part of the workflow sees ordinary studies. Errors name the config key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from studyflow.config._study import load_study
from studyflow.errors import ConfigError

# Problem and method names: no '-' (it joins them in study names) and nothing that names a path.
PART_NAME = re.compile(r"^[A-Za-z0-9_]+$")
LOADER = re.compile(r"^[A-Za-z0-9_.]+:[A-Za-z0-9_.]+$")  # 'module:function' or 'module:Class.method'
PROBLEM_KEYS = ("data", "objective_args", "set", "reference")
REFERENCE_ARG = "reference"  # the objective argument that holds the problem's reference


@dataclass
class ReferenceSpec:
    """`reference: {loader: module:function, kwargs: {...}}`: called as loader(data, **kwargs)
    (loader(**kwargs) for a problem without data); its JSON-able return value is written once
    under `<results>/matrix/references/` and given to every method's objective."""

    loader: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Problem:
    name: str
    data: str
    objective_args: dict[str, Any] = field(default_factory=dict)
    set: list[str] = field(default_factory=list)  # dot-list overrides of each of its studies
    reference: ReferenceSpec | None = None


@dataclass
class Method:
    name: str
    template: dict[str, Any]  # the base study file's keys, then the method's own over them


@dataclass
class Matrix:
    problems: dict[str, Problem]
    methods: dict[str, Method]
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # {study: (problem, method)}

    def __post_init__(self) -> None:
        self.pairs = {f"{p}-{m}": (p, m) for p in self.problems for m in self.methods}

    def study_dict(self, study: str) -> dict[str, Any]:
        """The study file of one pair: the method's template with the problem's dataset,
        objective_args (over the method's) and overrides."""
        problem_name, method_name = self.pairs[study]
        problem = self.problems[problem_name]
        merged = OmegaConf.merge(
            OmegaConf.create(self.methods[method_name].template),
            {"data": problem.data, "objective_args": problem.objective_args},
            OmegaConf.from_dotlist(problem.set),
        )
        return OmegaConf.to_container(merged)  # type: ignore[return-value]

    def reference(self, study: str) -> ReferenceSpec | None:
        return self.problems[self.pairs[study][0]].reference


def parse_matrix(raw: Any, source: str, study_dir: str, datasets: set[str]) -> Matrix | None:
    """Read and check the `matrix:` section (None when there is none)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(source, "matrix", "must be a mapping with 'problems' and 'methods'")
    for key in raw:
        if key not in ("problems", "methods"):
            raise ConfigError(source, f"matrix.{key}", "unknown key (matrix takes problems, methods)")
    sections = {}
    for key in ("problems", "methods"):
        value = raw.get(key)
        if not isinstance(value, dict) or not value:
            raise ConfigError(source, f"matrix.{key}", "missing (required): a mapping of names to settings")
        for name in value:
            if not PART_NAME.match(str(name)):
                raise ConfigError(source, f"matrix.{key}.{name}", f"name must match {PART_NAME.pattern}")
        sections[key] = value
    problems = {str(n): _problem(str(n), spec, source, datasets) for n, spec in sections["problems"].items()}
    methods = {str(n): _method(str(n), spec, source, study_dir) for n, spec in sections["methods"].items()}
    return Matrix(problems, methods)


def _problem(name: str, spec: Any, source: str, datasets: set[str]) -> Problem:
    key = f"matrix.problems.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(source, key, "must be a mapping (data, objective_args, set, reference)")
    for k in spec:
        if k not in PROBLEM_KEYS:
            raise ConfigError(source, f"{key}.{k}", f"unknown key (a problem takes {', '.join(PROBLEM_KEYS)})")
    data = spec.get("data")
    if data is None:
        raise ConfigError(source, f"{key}.data", "missing (required): a dataset defined under 'datasets'")
    if str(data) not in datasets:
        known = ", ".join(sorted(datasets)) or "none"
        raise ConfigError(source, f"{key}.data", f"dataset {data!r} is not defined under 'datasets' (known: {known})")
    args = spec.get("objective_args") or {}
    if not isinstance(args, dict):
        raise ConfigError(source, f"{key}.objective_args", "must be a mapping")
    if REFERENCE_ARG in args:
        raise ConfigError(source, f"{key}.objective_args.{REFERENCE_ARG}", "is the problem's reference: set it with 'reference'")
    overrides = spec.get("set") or []
    overrides = [overrides] if isinstance(overrides, str) else [str(o) for o in overrides]
    try:
        OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError(source, f"{key}.set", f"bad override {overrides}: {' '.join(str(exc).split())}") from None
    return Problem(name, str(data), dict(args), overrides, _reference(spec.get("reference"), source, key))


def _reference(spec: Any, source: str, key: str) -> ReferenceSpec | None:
    if spec is None:
        return None
    key = f"{key}.reference"
    if not isinstance(spec, dict):
        raise ConfigError(source, key, "must be a mapping {loader: module:function, kwargs: {...}}")
    for k in spec:
        if k not in ("loader", "kwargs"):
            raise ConfigError(source, f"{key}.{k}", "unknown key (a reference takes loader, kwargs)")
    loader = spec.get("loader")
    if not isinstance(loader, str) or not LOADER.match(loader):
        raise ConfigError(source, f"{key}.loader", f"{loader!r} must be 'module:function'")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(source, f"{key}.kwargs", "must be a mapping")
    return ReferenceSpec(loader, dict(kwargs))


def _method(name: str, spec: Any, source: str, study_dir: str) -> Method:
    """The method's template, checked as a study file on its own (its errors name its key)."""
    key = f"matrix.methods.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(source, key, "must be a mapping of study-file keys (and 'study': a base study file)")
    spec = dict(spec)
    base: dict[str, Any] = {}
    if spec.get("study") is not None:
        path = Path(study_dir) / f"{spec.pop('study')}.yaml"
        if not path.is_file():
            raise ConfigError(source, f"{key}.study", f"no study file {path}")
        load_study(path)  # the base file's own errors name that file
        base = OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[assignment]
    spec.pop("study", None)
    for k in ("data", "name"):
        if k in spec:
            raise ConfigError(source, f"{key}.{k}", "is set by the matrix (a problem's data; <problem>-<method>)")
    template = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(spec)))
    try:
        load_study(dict(template), name=name)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(source, f"{key}.{exc.key}" if exc.key else key, exc.message) from None
    template.pop("name", None)  # type: ignore[union-attr]
    return Method(name, template)  # type: ignore[arg-type]
