"""Study files and the workflow's config: loaded with OmegaConf, validated once, typed."""

from studyflow.config._matrix import REFERENCE_ARG
from studyflow.config._matrix import Matrix
from studyflow.config._matrix import ReferenceSpec
from studyflow.config._study import ClusterConfig
from studyflow.config._study import DatasetSpec
from studyflow.config._study import ParamSpec
from studyflow.config._study import StudyConfig
from studyflow.config._study import dataset_spec
from studyflow.config._study import load_study
from studyflow.config._validate import REPRODUCIBLE_ONLY
from studyflow.config._workflow import DEFAULT_CONFIG
from studyflow.config._workflow import WorkflowConfig
from studyflow.config._workflow import job_runtime_minutes
from studyflow.config._workflow import optimize_cores_unset
from studyflow.config._workflow import optimize_job_gpus
from studyflow.config._workflow import optimize_job_threads
from studyflow.config._workflow import optimize_job_workers
from studyflow.config._workflow_files import check_storage_plugins
from studyflow.config._workflow_files import config_hash_file
from studyflow.config._workflow_files import config_source
from studyflow.config._workflow_files import dataset_parts
from studyflow.config._workflow_files import release_rate_timers
from studyflow.config._workflow_files import dataset_spec_file
from studyflow.config._workflow_files import loader_code_file
from studyflow.config._workflow_files import report_settings_file
from studyflow.config._workflow_files import run_config_file
from studyflow.config._workflow_files import schema_error_line
from studyflow.config._workflow_files import storage_plugin
from studyflow.config._workflow_files import unreachable_source
from studyflow.config._workflow_files import check_objectives
from studyflow.config._workflow_files import write_run_files

__all__ = [
    "ClusterConfig",
    "DEFAULT_CONFIG",
    "DatasetSpec",
    "Matrix",
    "ParamSpec",
    "REFERENCE_ARG",
    "REPRODUCIBLE_ONLY",
    "ReferenceSpec",
    "StudyConfig",
    "WorkflowConfig",
    "check_storage_plugins",
    "config_hash_file",
    "config_source",
    "dataset_parts",
    "dataset_spec",
    "job_runtime_minutes",
    "optimize_cores_unset",
    "optimize_job_gpus",
    "optimize_job_threads",
    "optimize_job_workers",
    "load_study",
    "release_rate_timers",
    "dataset_spec_file",
    "loader_code_file",
    "report_settings_file",
    "run_config_file",
    "schema_error_line",
    "storage_plugin",
    "unreachable_source",
    "write_run_files",
    "check_objectives",
]
