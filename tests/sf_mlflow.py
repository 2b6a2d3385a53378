"""An objective tracked in MLflow as Optuna documents it: `MLflowCallback.track_in_mlflow()`
opens the trial's run on the worker and records its id on the trial; the same callback, among
the driver's callbacks, logs the value and parameters into that run. The tracking URI comes
from MLFLOW_TRACKING_URI, which the test sets."""

import mlflow
from optuna_integration.mlflow import MLflowCallback

mlflc = MLflowCallback(metric_name="loss")


@mlflc.track_in_mlflow()
def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    mlflow.log_metric("x_seen", x)  # the objective's own logging, in the trial's run
    return (x - 2) ** 2
