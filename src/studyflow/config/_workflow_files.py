"""What the Snakemake workflow needs beyond the config: its small run files and storage plugins.

The workflow writes small files at load, each only when its content changes, so its mtime
moves only then: a study's config hash and a hash of its objective's project source (so that
editing the objective or a module it imports re-runs it; so too a sampler or pruner of the
project named as 'module:Class'), the `optimize` rule's input in place
of the study file; each dataset's entry under `datasets:` with its loader's project source
(the `stage` rule's input: editing either re-stages the data, as does a `path:` to another
file, however old) and a hash of each reference loader's source (`matrix_reference`'s);
and its `report:` settings, the `report` rule's; so a `report:` edit re-runs only the report, and
a comment or a `cluster:` edit nothing. A matrix study's file, which its jobs read. And the
run's config as a job's `--config` reads it (a module's config, `--config` overrides). A dataset `path:` that is a URL is read through
Snakemake storage, whose plugin must be installed. And one Snakemake quirk worked around at
the end of a run (`release_rate_timers`).
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from studyflow._hashing import canonical_json
from studyflow._io import write_text
from studyflow.config._study import StudyConfig
from studyflow.config._workflow import WorkflowConfig
from studyflow.errors import ConfigError
from studyflow.store._code import loader_fingerprint
from studyflow.store._code import missing_module
from studyflow.store._code import source_fingerprint
from studyflow.store._code import strategy_fingerprint

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# URL scheme -> Snakemake storage plugin (snakemake-storage-plugin-<name>), where they differ
_PLUGIN_OF_SCHEME = {"gs": "gcs", "https": "http", "ftps": "ftp", "az": "azure"}


def config_source(configfiles: Iterable[str | Path], cli_configfiles: Iterable[str | Path], overrides: object) -> str:
    """How an error names the workflow's config: its files, in the order Snakemake merges them
    (the Snakefile's `configfile:`, then each --configfile over it), and whether --config
    overrides them."""
    cli = [Path(f) for f in cli_configfiles]
    names = []
    for path in [Path(f) for f in configfiles if Path(f) not in cli] + cli:
        try:
            names.append(str(path.resolve().relative_to(Path.cwd())))
        except ValueError:  # outside the working directory
            names.append(str(path))
    return (" + ".join(dict.fromkeys(names)) or "the config") + (" (with --config)" if overrides else "")


def schema_error_line(error: Any, source: str) -> str:
    """One line naming the file and key for a jsonschema `ValidationError` of the workflow
    config (Snakemake's schema check printed the error and the whole schema, ~100 lines, and
    never named a misspelt key)."""
    path = [str(part) for part in error.absolute_path]
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = list(schema.get("properties") or {})
    unknown = [k for k in error.instance if k not in known] if isinstance(error.instance, dict) else []
    if unknown and error.validator in ("additionalProperties", "required"):  # `studys:` lacks `studies:`
        key = unknown[0]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        message = f"unknown key ({hint}takes {', '.join(known)})" if known else "unknown key"
        return str(ConfigError(source, ".".join([*path, str(key)]), message))
    if error.validator == "required":
        missing = next((k for k in error.validator_value if k not in (error.instance or {})), "?")
        described = (schema.get("properties", {}).get(missing) or {}).get("description", "")
        detail = f" ({described.split(';')[0]})" if described else ""
        return str(ConfigError(source, ".".join([*path, missing]), f"missing{detail}"))
    return str(ConfigError(source, ".".join(path), " ".join(error.message.split())))


def storage_plugin(path: str | None) -> str | None:
    """The storage plugin package that reads `path` ('snakemake-storage-plugin-s3' for
    's3://...'), or None for a local path."""
    match = _URL.match(path or "")
    if match is None:
        return None
    scheme = match.group(1).lower()
    return f"snakemake-storage-plugin-{_PLUGIN_OF_SCHEME.get(scheme, scheme)}"


def dataset_parts(path: str) -> list[str]:
    """The files of a local dataset folder (a partitioned parquet dataset), as pyarrow reads
    it: every file whose path inside the folder has no part starting with "." or "_" (Spark's
    `_SUCCESS`, checksums). As the stage rule's inputs, a part rewritten in place (the folder's
    mtime unchanged) or added re-stages; [] for a file or a URL."""
    folder = Path(path)
    if storage_plugin(path) is not None or not folder.is_dir():
        return []
    return sorted(str(f) for f in folder.rglob("*")
                  if f.is_file() and not any(p.startswith((".", "_")) for p in f.relative_to(folder).parts))


def check_storage_plugins(workflow: WorkflowConfig, datasets: list[str]) -> None:
    """Refuse, naming the plugin to install, a URL dataset whose storage plugin is missing."""
    for name in datasets:
        path = workflow.datasets[name].path
        plugin = storage_plugin(path)
        if plugin is not None and importlib.util.find_spec(plugin.replace("-", "_")) is None:
            raise ConfigError(
                workflow.source, f"datasets.{name}.path",
                f"{path} is read through Snakemake storage: pip install {plugin}",
            )


def sync_text(path: str | Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds exactly that; True if it wrote."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    write_text(path, text)
    return True


def run_config_file(workflow: WorkflowConfig) -> str:
    return f"{workflow.results}/.workflow/config.yaml"


def config_hash_file(workflow: WorkflowConfig, study: str) -> str:
    return f"{workflow.results}/.workflow/studies/{study}.hash"


def report_settings_file(workflow: WorkflowConfig, study: str) -> str:
    return f"{workflow.results}/.workflow/studies/{study}.report.json"


def loader_code_file(workflow: WorkflowConfig, kind: str, name: str) -> str:
    """The fingerprint of a loader's project source: the `matrix_reference` rule's input for a
    problem (`kind` "references")."""
    return f"{workflow.results}/.workflow/{kind}/{name}.code"


def dataset_spec_file(workflow: WorkflowConfig, name: str) -> str:
    """A dataset's entry under `datasets:` and its loader's source fingerprint: the `stage`
    rule's input, so an edit to either re-stages it."""
    return f"{workflow.results}/.workflow/datasets/{name}.spec"


def _search_paths(study_file: Path) -> list[str]:
    """Where a study's workers import its objective from (as `worker.search_paths`)."""
    return [str(Path(study_file).resolve().parent), str(Path.cwd())]


def check_objectives(workflow: WorkflowConfig, studies: dict[str, StudyConfig]) -> None:
    """Fail, naming the study file and `objective`, when an objective's module is nowhere a
    worker would import it from: before any job, so `snakemake -n` says so too."""
    for name, cfg in studies.items():
        module = (cfg.objective or "").partition(":")[0]
        missing = missing_module(module, _search_paths(workflow.study_file(name))) if module else None
        if missing is not None:
            raise ConfigError(cfg.source or str(workflow.study_file(name)), "objective",
                              f"no module named {missing!r} in the study file's folder, the working "
                              "directory or the installed packages")


def write_run_files(workflow: WorkflowConfig, studies: dict[str, StudyConfig]) -> None:
    """The run's config for the jobs, and each study's config hash (see the module's doc)."""
    sync_text(run_config_file(workflow), OmegaConf.to_yaml(OmegaConf.create(workflow.run_config())))
    for name, cfg in studies.items():
        if workflow.matrix is not None and workflow.is_matrix_study(name):  # the file its jobs read
            study = OmegaConf.create(workflow.matrix.study_dict(name))
            sync_text(workflow.study_file(name), OmegaConf.to_yaml(study))
        paths = _search_paths(workflow.study_file(name))
        code = source_fingerprint(cfg.objective, paths)
        strategy = strategy_fingerprint(cfg.sampler.name, cfg.pruner.name, paths)  # a user's own sampler
        extra = f"strategy {canonical_json(strategy)}\n" if strategy else ""
        sync_text(config_hash_file(workflow, name), f"{cfg.config_hash()}\ncode {code}\n{extra}")
        sync_text(report_settings_file(workflow, name), canonical_json(cfg.report) + "\n")
    here = [str(Path.cwd())]  # a loader is imported from the working directory or an installed package
    for name in sorted({cfg.data for cfg in studies.values() if cfg.data}):
        spec = workflow.datasets[name]
        entry = canonical_json({"path": spec.path, "loader": spec.loader, "kwargs": spec.kwargs})
        code = f"code {loader_fingerprint(spec.loader, here)}\n" if spec.loader else ""
        sync_text(dataset_spec_file(workflow, name), f"spec {entry}\n{code}")
    for name, problem in (workflow.matrix.problems.items() if workflow.matrix is not None else ()):
        if problem.reference:
            code = loader_fingerprint(problem.reference.loader, here)
            sync_text(loader_code_file(workflow, "references", name), f"code {code}\n")


def unreachable_source(path: str | None, rules: Iterable[Any]) -> bool:
    """Whether a dataset's local `path` neither exists nor is written by one of the workflow's
    `rules`. Snakemake takes an existing file whose producer lacks an input as a source, and
    so on down the chain: once a dataset's `path:` named a file that does not exist, no job
    ran and the studies' old results stood, with nothing said."""
    return (path is not None and storage_plugin(path) is None and not Path(path).exists()
            and not any(rule.is_producer(path) for rule in rules))


def release_rate_timers() -> int:
    """Cancel the job scheduler's pending re-evaluation timers once the workflow is done.

    With its default `--max-jobs-per-timespan 100/1s`, Snakemake's job scheduler starts a
    non-daemon `threading.Timer` of one second after every scheduling round
    (`JobScheduler._schedule_reevalutation`), so the interpreter waits up to that second
    after the last job before it exits (1.3 s measured at the end of the default run). Called
    from `onsuccess`/`onerror`, when nothing is scheduled any more; other timers are left alone.
    Returns how many it cancelled."""
    cancelled = 0
    for thread in threading.enumerate():
        function = getattr(thread, "function", None)
        if isinstance(thread, threading.Timer) and "_schedule_reevalutation" in getattr(function, "__qualname__", ""):
            thread.cancel()
            cancelled += 1
    return cancelled
