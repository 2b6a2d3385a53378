"""Cross-validated HistGradientBoostingClassifier: the default example's objective."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.model_selection import cross_val_score

from studyflow.errors import DataError


def objective(trial: Any, data: pd.DataFrame, target: str = "target", cv: int = 3, scoring: str = "roc_auc") -> float:
    """Mean cross-validated score; every hyperparameter comes from the study's search space."""
    if target not in data.columns:
        raise DataError(f"objective_args.target: column {target!r} not in the staged data")
    model = HistGradientBoostingClassifier(
        learning_rate=trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        max_iter=trial.suggest_int("max_iter", 20, 200, step=10),
        max_leaf_nodes=trial.suggest_int("max_leaf_nodes", 4, 64, log=True),
        min_samples_leaf=trial.suggest_int("min_samples_leaf", 2, 50),
        l2_regularization=trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True),
        early_stopping=False,
        random_state=0,
    )
    x = data.drop(columns=[target])
    y = data[target]
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=0)
    scores = cross_val_score(model, x, y, cv=folds, scoring=scoring)
    trial.set_user_attr("cv_std", float(scores.std()))
    return float(scores.mean())
