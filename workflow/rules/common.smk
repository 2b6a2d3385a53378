# Validate the config once and name the helpers the rules use.
import json
import shlex

from snakemake.utils import validate

from studyflow.config import WorkflowConfig
from studyflow.config import job_runtime_minutes
from studyflow.config import optimize_job_threads

validate(config, "../schemas/config.schema.yaml")

WORKFLOW = WorkflowConfig.from_dict(config, source="config/config.yaml (with --config)")
# Loading each study here validates it, so a bad study file fails before any job starts.
STUDIES = {name: WORKFLOW.load(name) for name in WORKFLOW.studies}
DATASETS = sorted({cfg.data for cfg in STUDIES.values() if cfg.data is not None})


wildcard_constraints:
    study="|".join(STUDIES) or "NO_STUDIES",
    dataset="|".join(DATASETS) or "NO_DATASETS",


def final_outputs():
    return [
        *expand("results/reports/{study}.html", study=STUDIES),
        "results/reports/index.html",
        "results/summary/studies.parquet",
        "results/summary/best_params.csv",
    ]


def dataset_spec_json(wildcards):
    spec = WORKFLOW.datasets[wildcards.dataset]
    return json.dumps({"path": spec.path, "loader": spec.loader, "kwargs": spec.kwargs}, sort_keys=True)


def optimize_inputs(wildcards):
    cfg = STUDIES[wildcards.study]
    inputs = {"study": study_file(wildcards)}
    if cfg.data is not None:
        inputs["data"] = f"results/data/{cfg.data}.parquet"
        inputs["manifest"] = f"results/data/{cfg.data}.manifest.json"
    return inputs


def study_file(wildcards):
    return str(WORKFLOW.study_file(wildcards.study))


def optimize_threads(wildcards, cores=None):
    """The study's concurrency if it sets one, else every core Snakemake was given; one where
    the workers run elsewhere (SLURM jobs, a cluster attached to): the job only hosts the
    scheduler and the study server."""
    return optimize_job_threads(STUDIES[wildcards.study]) or cores or workflow.cores


def optimize_runtime_minutes(wildcards):
    return job_runtime_minutes(STUDIES[wildcards.study])


def study_config_hash(wildcards):
    return STUDIES[wildcards.study].config_hash()


def study_set_args(wildcards):
    return " ".join(f"--set {shlex.quote(o)}" for o in WORKFLOW.study_overrides(wildcards.study))
