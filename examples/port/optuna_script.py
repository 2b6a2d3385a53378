"""An ordinary single-process Optuna study: the starting point for porting to studyflow."""

import optuna


def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -5, 5)
    kind = trial.suggest_categorical("kind", ["linear", "square"])
    penalty = abs(y + 1) if kind == "linear" else (y + 1) ** 2
    return (x - 2) ** 2 + penalty


if __name__ == "__main__":
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=40)
    print(f"best value {study.best_value:.4f} with {study.best_params}")
