"""The system attributes studyflow writes on trials in a study's journal.

One place for the study server, which writes them, and for what reads them back (tables, the
study card, the trial store, warm start). Each is `studyflow:<name>` in the journal.
"""

ERROR_ATTR = "studyflow:error"
# How an error starts when the infrastructure, not the objective, ended the trial (a lost
# worker, an interrupted run): retried, not counted against `budget.max_failures`.
INFRA_ERRORS = ("WorkerLost", "Interrupted")
WORKER_ATTR = "studyflow:worker"
ATTEMPT_ATTR = "studyflow:attempt"
RETRY_OF_ATTR = "studyflow:retry_of"
KEY_ATTR = "studyflow:key"
CACHED_ATTR = "studyflow:cached"
DURATION_ATTR = "studyflow:duration_s"  # the objective's own run time, measured on the worker
# Sampled but never run (held by a loop when the study stopped): FAIL in the journal, as Optuna
# cannot take back an ask, and left out of tables and counts.
NOT_RUN_ATTR = "studyflow:not_run"
NOT_RUN_ERROR = "Interrupted: not run before the study stopped"
INTERRUPTED_ERROR = "Interrupted: the run was stopped"  # running when it was: re-run, no attempt counted
# An earlier study's finished trial, copied in by `warm_start` (its source journal and number):
# history for the sampler, left out of this study's budget, counts, best and tables.
WARM_START_ATTR = "studyflow:warm_start"
STARTED_ATTR = "studyflow:started"  # the loop holding it has begun it (else it only holds it)

STUDYFLOW_PREFIX = "studyflow:"  # the attributes above: an objective cannot set them

# An objective may set any other system attribute on its trial, as Optuna's helpers and
# integrations do through `trial.storage` (MLflow's run id, say): the server sets them before
# the tell. These hold the trial's result, so a trial answered from the store gets them too.
CONSTRAINT_PREFIX = "constraints:"  # Optuna's system attr per constraint (`Trial.set_constraint`)
ARTIFACT_PREFIX = "artifacts:"  # `optuna.artifacts.upload_artifact`'s record of an artifact
CV_SCORES = "terminator:cv_scores"  # `optuna.terminator.report_cross_validation_scores`'s
RESULT_SYSTEM_ATTRS = (CONSTRAINT_PREFIX, ARTIFACT_PREFIX, CV_SCORES)
