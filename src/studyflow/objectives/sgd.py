"""An SGD classifier trained epoch by epoch, reporting validation accuracy each epoch so a
pruner can stop hopeless trials early (the pruning example)."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


def objective(trial: Any, data: pd.DataFrame, target: str = "target", epochs: int = 20) -> float:
    alpha = trial.suggest_float("alpha", 1e-6, 1e-1, log=True)
    eta0 = trial.suggest_float("eta0", 1e-4, 1.0, log=True)
    loss = trial.suggest_categorical("loss", ["hinge", "log_loss", "modified_huber"])
    x = StandardScaler().fit_transform(data.drop(columns=[target]).to_numpy(dtype=float))
    y = data[target].to_numpy()
    x_train, x_valid, y_train, y_valid = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    model = SGDClassifier(alpha=alpha, eta0=eta0, learning_rate="constant", loss=loss,
                          random_state=trial.seed % 2**31)
    classes = np.unique(y)
    accuracy = 0.0
    for epoch in range(epochs):
        model.partial_fit(x_train, y_train, classes=classes)
        accuracy = float(model.score(x_valid, y_valid))
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return accuracy
