"""The same study run by studyflow on a local Dask cluster: only the marked lines changed."""

import studyflow  # changed


def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -5, 5)
    kind = trial.suggest_categorical("kind", ["linear", "square"])
    penalty = abs(y + 1) if kind == "linear" else (y + 1) ** 2
    return (x - 2) ** 2 + penalty


if __name__ == "__main__":
    settings = {"sampler": {"name": "tpe", "seed": 0}, "budget": {"n_trials": 40}}  # changed
    study = studyflow.optimize(objective, settings, n_workers=2, progress=False).study  # changed
    print(f"best value {study.best_value:.4f} with {study.best_params}")
