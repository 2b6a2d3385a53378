"""The example study matrix's objective: a classifier's cross-validated accuracy over the
problem's reference (the same model family's default settings, computed once per problem)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def _accuracy(model: Any, data: pd.DataFrame, target: str, cv: int) -> float:
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=0)
    pipeline = make_pipeline(StandardScaler(), model)
    return float(cross_val_score(pipeline, data.drop(columns=[target]), data[target], cv=folds).mean())


def reference(data: pd.DataFrame, target: str = "target", cv: int = 3) -> dict[str, float]:
    """The reference loader: default logistic regression's accuracy on the problem's data."""
    return {"accuracy": _accuracy(LogisticRegression(max_iter=500), data, target, cv)}


def objective(trial: Any, data: pd.DataFrame, reference: dict[str, float], model: str = "logreg",
              target: str = "target", cv: int = 3) -> float:
    """Accuracy minus the reference's (> 0: tuning beat the defaults); `model` is the method's."""
    if model == "knn":
        estimator: Any = KNeighborsClassifier(
            n_neighbors=trial.suggest_int("n_neighbors", 1, 30),
            weights=trial.suggest_categorical("weights", ["uniform", "distance"]),
        )
    else:
        estimator = LogisticRegression(C=trial.suggest_float("C", 1e-3, 1e2, log=True), max_iter=500)
    accuracy = _accuracy(estimator, data, target, cv)
    trial.set_user_attr("accuracy", accuracy)
    return accuracy - reference["accuracy"]
