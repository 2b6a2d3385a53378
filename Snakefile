# studyflow: Optuna studies as a Snakemake workflow. Logic lives in src/studyflow; rules stay thin.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/stage.smk"
include: "workflow/rules/optimize.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/matrix.smk"


# Snakemake's scheduler leaves a 1 s timer that the interpreter waits for at exit.
onsuccess:
    release_rate_timers()


onerror:
    release_rate_timers()


rule all:
    input:
        final_outputs,
    default_target: True
