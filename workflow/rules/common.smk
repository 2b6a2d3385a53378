# Validate the config once and name the helpers the rules use. Every path is under the config's
# `results:` and `logs:` prefixes, so the workflow also runs as a module of another workflow.
import json
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from studyflow.config import WorkflowConfig
from studyflow.config import check_objectives
from studyflow.config import check_storage_plugins
from studyflow.config import config_hash_file
from studyflow.config import config_source
from studyflow.config import dataset_parts
from studyflow.config import job_runtime_minutes
from studyflow.config import optimize_cores_unset
from studyflow.config import optimize_job_gpus
from studyflow.config import optimize_job_threads
from studyflow.config import optimize_job_workers
from studyflow.config import release_rate_timers
from studyflow.config import dataset_spec_file
from studyflow.config import loader_code_file
from studyflow.config import report_settings_file
from studyflow.config import run_config_file
from studyflow.config import schema_error_line
from studyflow.config import storage_plugin
from studyflow.config import unreachable_source
from studyflow.config import write_run_files
from studyflow.errors import StudyflowError

_CONFIG_SOURCE = (
    config_source(workflow.configfiles, workflow.config_settings.configfiles, workflow.config_settings.config)
    if workflow.modifier.is_main_snakefile()
    else "the studyflow module's config"
)
try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as exc:  # one line naming the key, not the error and the whole schema
    if not hasattr(exc.__context__, "absolute_path"):  # jsonschema's ValidationError
        raise
    raise WorkflowError(schema_error_line(exc.__context__, _CONFIG_SOURCE)) from None
try:  # a bad config or study file: its one line, without studyflow's frames
    WORKFLOW = WorkflowConfig.from_dict(config, source=_CONFIG_SOURCE)
    # Loading each study here validates it, so a bad study file fails before any job starts.
    STUDIES = WORKFLOW.load_all()
    DATASETS = WORKFLOW.used_datasets(STUDIES)
    check_storage_plugins(WORKFLOW, DATASETS)
    check_objectives(WORKFLOW, STUDIES)
except StudyflowError as exc:
    raise WorkflowError(str(exc)) from None
RESULTS = WORKFLOW.results
LOGS = WORKFLOW.logs
# The study matrix (config `matrix:`), expanded into STUDIES as <problem>-<method>.
MATRIX = WORKFLOW.matrix
MATRIX_STUDIES = list(MATRIX.pairs) if MATRIX else []
REFERENCED = [p for p, spec in MATRIX.problems.items() if spec.reference] if MATRIX else []
# The jobs' --config file, each study's config hash (optimize's input) and report settings (the
# report's input), each written only when it changed: other edits of a study file re-run nothing.
write_run_files(WORKFLOW, STUDIES)


wildcard_constraints:
    study="|".join(STUDIES) or "NO_STUDIES",
    dataset="|".join(DATASETS) or "NO_DATASETS",
    problem="|".join(REFERENCED) or "NO_PROBLEMS",


def results(path):
    """`path` under the results prefix (config key `results`)."""
    return f"{RESULTS}/{path}"


def logs(path):
    """`path` under the logs prefix (config key `logs`)."""
    return f"{LOGS}/{path}"


def final_outputs(wildcards=None):
    """What the workflow makes; the `all` rule's input function, so it runs once every rule is
    defined: a dataset `path:` that does not exist and that no rule writes fails here, in one
    line (Snakemake would take the studies' old results as up to date, saying nothing)."""
    for name in DATASETS:
        path = WORKFLOW.datasets[name].path
        if unreachable_source(path, workflow.rules):
            raise WorkflowError(f"{_CONFIG_SOURCE}: datasets.{name}.path: {path} does not exist, "
                                "and no rule of the workflow writes it")
    return [
        *expand(results("reports/{study}.html"), study=STUDIES),
        results("reports/index.html"),
        results("summary/studies.parquet"),
        results("summary/best_params.csv"),
        *([results("summary/matrix.parquet"), results("reports/matrix.html")] if MATRIX else []),
    ]


def stage_inputs(wildcards):
    """The dataset's entry and its loader's code fingerprint (editing either re-stages), and
    a `path:` dataset's file (through Snakemake storage for a URL), or a folder's and its
    files: editing one re-stages, and a rule of the workflow that writes it runs first."""
    spec = {"spec": dataset_spec_file(WORKFLOW, wildcards.dataset)}
    path = WORKFLOW.datasets[wildcards.dataset].path
    if path is None:
        return spec
    return {**spec, "source": storage(path) if storage_plugin(path) else path, "parts": dataset_parts(path)}


def dataset_spec_json(wildcards, input):
    spec = WORKFLOW.datasets[wildcards.dataset]
    path = str(input.source) if spec.path is not None else None  # storage's local copy for a URL
    return json.dumps({"path": path, "loader": spec.loader, "kwargs": spec.kwargs}, sort_keys=True)


def optimize_inputs(wildcards):
    cfg = STUDIES[wildcards.study]
    inputs = {"config_hash": config_hash_file(WORKFLOW, wildcards.study)}
    if cfg.data is not None:
        inputs["data"] = results(f"data/{cfg.data}.parquet")
        inputs["manifest"] = results(f"data/{cfg.data}.manifest.json")
    reference = matrix_reference_file(wildcards.study)
    if reference is not None:
        inputs["reference"] = reference
    return inputs


def matrix_reference_file(study):
    """A matrix study's problem reference (None for other studies, or a problem without one)."""
    if study not in MATRIX_STUDIES or MATRIX.reference(study) is None:
        return None
    return results(f"matrix/references/{MATRIX.pairs[study][0]}.json")


def study_reference_args(wildcards):
    reference = matrix_reference_file(wildcards.study)
    return "" if reference is None else f"--reference {shlex.quote(reference)}"


def reference_inputs(wildcards):
    """The problem's staged data, and its loader's code fingerprint: editing it re-runs it."""
    return {"data": results(f"data/{MATRIX.problems[wildcards.problem].data}.parquet"),
            "code": loader_code_file(WORKFLOW, "references", wildcards.problem)}


def reference_spec_json(wildcards):
    spec = MATRIX.problems[wildcards.problem].reference
    return json.dumps({"loader": spec.loader, "kwargs": spec.kwargs}, sort_keys=True)


def matrix_pairs_json():
    return json.dumps({study: list(pair) for study, pair in (MATRIX.pairs if MATRIX else {}).items()})


def index_page_args():
    """Pages the index links beside the study cards: the matrix's."""
    return shlex.quote("--page=matrix.html=Study matrix") if MATRIX else ""


def study_report_settings(wildcards):
    return report_settings_file(WORKFLOW, wildcards.study)


def study_file(wildcards):
    return str(WORKFLOW.study_file(wildcards.study))


def optimize_threads(wildcards, cores=None):
    """The study's concurrency if it sets one, else every core Snakemake was given (--cores;
    with an executor, what one job may book); one where the workers run elsewhere (SLURM jobs,
    a cluster attached to): the job only hosts the scheduler and the study server."""
    threads = optimize_job_threads(STUDIES[wildcards.study]) or cores
    if threads is None and workflow.resource_settings.cores is None:  # an executor's run without --cores
        raise WorkflowError(optimize_cores_unset(wildcards.study))
    try:
        return threads or workflow.cores
    except WorkflowError:  # no cores at all: `--report`, which runs no job
        return 1


def optimize_workers(wildcards, threads):
    """Worker processes for the job's threads: one per `cluster.trial_threads`."""
    return optimize_job_workers(STUDIES[wildcards.study], threads)


def optimize_gpus(wildcards):
    return optimize_job_gpus(STUDIES[wildcards.study])


def optimize_runtime_minutes(wildcards):
    return job_runtime_minutes(STUDIES[wildcards.study])


def study_config_hash(wildcards):
    return STUDIES[wildcards.study].config_hash()


def study_set_args(wildcards):
    return " ".join(f"--set {shlex.quote(o)}" for o in WORKFLOW.study_overrides(wildcards.study))
