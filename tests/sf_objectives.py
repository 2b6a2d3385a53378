"""Objectives used by the tests; importable on worker processes through PYTHONPATH."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time


def quadratic(trial):
    """A plain Optuna objective: every parameter suggested define-by-run."""
    x = trial.suggest_float("x", -10, 10)
    n = trial.suggest_int("n", 1, 5)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    return (x - 2) ** 2 + n + (0.5 if kind == "b" else 0.0)


def instant(trial):
    return trial.suggest_float("x", 0, 1)


def with_data(trial, data, column="y", scale=1.0):
    trial.set_user_attr("rows", len(data))
    return float(data[column].sum()) * scale * trial.suggest_float("w", 0, 1)


def scaled(trial, scale=1.0):
    return scale * trial.suggest_float("x", 0, 1)


def takes_trial_only(trial):
    return trial.suggest_float("x", 0, 1)


def reads_trial_data(trial):
    """An objective(trial) of a study with data: it finds the data on the trial."""
    return float(trial.data["y"].sum()) * trial.suggest_float("x", 0, 1)


def raises_when_large(trial):
    x = trial.suggest_float("x", 0, 1)
    if x > 0.7:
        raise ValueError(f"x too large: {x:.3f}")
    return x


def nan_when_large(trial):
    x = trial.suggest_float("x", 0, 1)
    return math.nan if x > 0.7 else x


def always_raises(trial):
    trial.suggest_float("x", 0, 1)
    raise RuntimeError("broken objective")


def kills_worker_once(trial):
    """SIGKILLs its own worker process mid-trial, on trial 3 (or SF_KILL_AT) while its marker
    file is absent (writing there the x it ran with)."""
    x = trial.suggest_float("x", 0, 1)
    time.sleep(0.05)
    marker = os.environ.get("SF_KILL_MARKER")
    if marker and trial.number == int(os.environ.get("SF_KILL_AT", "3")) and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(repr(x))
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def crashes_above_09(trial):
    """A backtest whose C extension crashes its process at once for x > 0.9; appends
    "began <number>" and "returned <number>" lines to $SF_RUNS_LOG."""
    x = trial.suggest_float("x", 0, 1)
    with open(os.environ["SF_RUNS_LOG"], "a") as f:
        f.write(f"began {trial.number}\n")
    if x > 0.9:
        os.kill(os.getpid(), signal.SIGKILL)
    with open(os.environ["SF_RUNS_LOG"], "a") as f:
        f.write(f"returned {trial.number}\n")
    return x


def counted(trial):
    """Appends one line per evaluation to $SF_COUNT_FILE, so tests can count evaluations."""
    x = trial.suggest_float("x", 0, 1)
    with open(os.environ["SF_COUNT_FILE"], "a") as f:
        f.write(f"{trial.number}\n")
    time.sleep(float(os.environ.get("SF_SLEEP", "0")))
    return x


def hangs_when_large(trial):
    x = trial.suggest_float("x", 0, 1)
    if x > 0.8:
        time.sleep(600)
    return x


def constant(trial):
    trial.suggest_float("x", 0, 1)
    return 1.0


def sleepy(trial):
    time.sleep(0.1)
    return trial.suggest_float("x", 0, 1)


def two_objectives(trial):
    x = trial.suggest_float("x", 0, 1)
    return x, (1 - x) ** 2


def named_metrics(trial):
    """One or two objectives, as the study's directions say; records the metric names the
    objective sees through `trial.study`."""
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("seen", ",".join(trial.study.metric_names or []))
    return x if len(trial.study.directions) == 1 else (x, (1 - x) ** 2)


def learning_curve(trial):
    """Reports a score per epoch; bad `x` plateaus high, so the median pruner stops it."""
    x = trial.suggest_float("x", 0, 1)
    score = 1.0
    for epoch in range(10):
        score = x + 1.0 / (epoch + 1)
        trial.report(score, epoch)
        if trial.should_prune():
            import optuna

            raise optuna.TrialPruned()
    return score


def unserializable_attr(trial):
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("x", x)  # kept, beside what cannot be
    if x > 0.75:
        trial.set_user_attr("thing", {1, 2})  # a set: not JSON, cannot be journaled
    elif x > 0.5:
        import datetime

        trial.set_user_attr("when", datetime.datetime.now())  # nor can a datetime
    return x


def storage_system_attrs(trial):
    """Records things on its trial through `trial.storage`, as Optuna's integrations do
    (MLflow's `track_in_mlflow` its run id): one in three a value JSON cannot hold, one in
    three a name of studyflow's own."""
    import numpy as np

    x = trial.suggest_float("x", 0, 1)
    trial.storage.set_trial_system_attr(trial._trial_id, "run_id", f"run-{trial.number}")
    trial.storage.set_trial_system_attr(trial._trial_id, "curve", np.array([x, 2 * x]))
    if trial.number % 3 == 1:
        trial.storage.set_trial_system_attr(trial._trial_id, "tags", {"a", "b"})  # a set: not JSON
    elif trial.number % 3 == 2:
        trial.storage.set_trial_system_attr(trial._trial_id, "studyflow:key", "mine")
    return x


def big_int_attr(trial):
    """A user attr JSON holds and msgpack cannot: an int beyond 64 bits (a hash, a seed)."""
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("digest", 2**70 + trial.number)
    trial.set_user_attr("small", trial.number)
    return x


def jittery(trial):
    """Random durations, so completion order differs from run to run."""
    import random

    time.sleep(random.uniform(0, 0.03))
    x, y = trial.params["x"], trial.params["y"]
    return (x - 0.3) ** 2 + (y - 0.6) ** 2


def logged_key(trial):
    """Logs `key start end` per evaluation to $SF_COUNT_FILE."""
    start = time.time()
    time.sleep(0.05)
    value = {"a": 1.0, "b": 2.0}[trial.params["c"]] + trial.params["k"]
    with open(os.environ["SF_COUNT_FILE"], "a") as f:
        f.write(f"{trial.key} {start} {time.time()}\n")
    return value


def bowl(trial):
    """The sampler tests' task: both parameters define-by-run, as a plain Optuna script has them."""
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_float("y", -10, 10)
    return x * x + y * y


def narrowing(trial):
    """The bowl whose `x` range narrows from trial 10 on, suggested after `y`: a suggest that no
    longer asks for the distribution the shared space was sampled from."""
    y = trial.suggest_float("y", -10, 10)
    bound = 10 if trial.number < 10 else 5
    x = trial.suggest_float("x", -bound, bound)
    return x * x + y * y


def conditional(trial):
    """A conditional space: which parameters exist depends on the first one."""
    kind = trial.suggest_categorical("kind", ["tree", "linear"])
    if kind == "tree":
        depth = trial.suggest_int("depth", 1, 8)
        rate = trial.suggest_float("rate", 1e-3, 1.0, log=True)
        return (depth - 5) ** 2 / 10 + abs(math.log10(rate) + 1)
    alpha = trial.suggest_float("alpha", -5, 5)
    return alpha * alpha + 0.5


def sees_gpus(trial):
    """Records which GPUs the trial's process may see, as a framework would read them."""
    trial.set_user_attr("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
    time.sleep(0.05)
    return trial.suggest_float("x", 0, 1)


def slow_last(trial):
    """0.2 s trials, but trial $SF_SLOW_TRIAL takes $SF_SLOW_S: a long tail on one worker."""
    x = trial.suggest_float("x", 0, 1)
    slow = trial.number == int(os.environ.get("SF_SLOW_TRIAL", "-1"))
    time.sleep(float(os.environ.get("SF_SLOW_S", "20")) if slow else 0.2)
    return x


RETURNS = {  # what objectives return, as plain Optuna takes (or refuses) it
    "inf": lambda: math.inf, "-inf": lambda: -math.inf, "decimal": lambda: __import__("decimal").Decimal("1.25"),
    "bool": lambda: True, "numpy-0d": lambda: __import__("numpy").array(4.5),
    "numpy-float32": lambda: __import__("numpy").float32(1.5), "list-of-one": lambda: [2.5],
    "nan": lambda: math.nan, "text": lambda: "abc", "none": lambda: None, "list-of-two": lambda: [1.0, 2.0],
}


def returns(trial):
    """Returns what its `kind` names (RETURNS), as an objective written for plain Optuna might."""
    return RETURNS[trial.suggest_categorical("kind", list(RETURNS))]()


def pruned_after_first(trial):
    """Trial 0 completes; every later one is pruned at its first report."""
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 0:
        return x
    import optuna

    trial.report(x, 0)
    raise optuna.TrialPruned()


def dominated_after_first(trial):
    """Two objectives (minimized): trial 0's (0.5, 0.5) dominates every later trial's (1, 1)."""
    trial.suggest_float("x", 0, 1)
    return (0.5, 0.5) if trial.number == 0 else (1.0, 1.0)


def suggests_declared_differently(trial):
    """Suggests `x` over another range than a study file may declare, and `n` as an int."""
    x = trial.suggest_float("x", 0, 10)
    n = trial.suggest_int("n", 1, 5)
    assert type(n) is int
    return x + n


def exits_when_large(trial):
    """Calls sys.exit, as a script's error handling (or argparse) would, on large `x`."""
    import sys

    x = trial.suggest_float("x", 0, 1)
    if x > 0.7:
        sys.exit(3)
    return x


def stops_at_trial_3(trial):
    """Calls `trial.study.stop()` in trial 3, as an Optuna objective may to end its study."""
    time.sleep(0.05)
    if trial.number == 3:
        trial.study.stop()
    return trial.suggest_float("x", 0, 1)


def numpy_attrs(trial):
    """Sets user attrs as a model's fit gives them: NumPy scalars and arrays."""
    import numpy as np

    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("best_iteration", np.int64(7))
    trial.set_user_attr("score", np.float32(0.5))
    trial.set_user_attr("curve", np.array([0.25, 0.5]))
    trial.set_user_attr("nested", {"sizes": (np.int64(1), np.int64(2))})
    try:
        import torch
    except ImportError:  # the dev install has it (CPU build)
        torch = None
    if torch is not None:
        trial.set_user_attr("loss", torch.tensor(0.25))
    return x


def fit_arrays(trial, data):
    """An ML objective given its arrays as data=(X, y), not a DataFrame."""
    X, y = data
    w = trial.suggest_float("w", -1, 1)
    trial.set_user_attr("rows", len(y))
    return float(((X[:, 0] * w - y) ** 2).mean())


def pooled(trial):
    """Starts processes of its own, as a PyTorch DataLoader's workers or a process pool do."""
    import multiprocessing

    x = trial.suggest_float("x", 0, 1)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(float, (x,))


def reports_cv_scores(trial):
    """Reports its cross-validation scores for Optuna's terminator, as its docs show."""
    import warnings

    from optuna.terminator import report_cross_validation_scores

    x, y = trial.suggest_float("x", -5, 5), trial.suggest_float("y", -5, 5)
    value = x * x + y * y
    with warnings.catch_warnings():  # the terminator is deprecated since Optuna 4.9, not removed
        warnings.simplefilter("ignore", FutureWarning)
        report_cross_validation_scores(trial, [value * 0.9, value, value * 1.1])
    return value


def discrete(trial):
    """A small discrete space (4 x 3 points) for Optuna's BruteForceSampler."""
    a = trial.suggest_int("a", 0, 3)
    c = trial.suggest_categorical("c", ["x", "yy", "zzz"])
    return a * 10 + len(c)


def reports_threads(trial):
    """What a CPU-bound model fit gets: its BLAS/OpenMP and torch threads, and the cores a
    matrix product really kept busy (CPU seconds per wall second)."""
    import time

    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("omp_env", os.environ.get("OMP_NUM_THREADS"))
    trial.set_user_attr("blas", max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
    trial.set_user_attr("torch", torch.get_num_threads())
    trial.set_user_attr("joblib", __import__("joblib").effective_n_jobs(-1))  # scikit-learn's n_jobs=-1
    a = np.random.default_rng(0).random((1000, 1000))
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < 0.6:
        a @ a
    trial.set_user_attr("cpu_per_wall", (time.process_time() - cpu) / (time.perf_counter() - wall))
    return 0.0


def prints_then_waits_for_go(trial):
    """A long trial that reports as it goes: prints a line, then waits for the file `go`
    (made by the test once it has read that line in the job's log)."""
    import time

    x = trial.suggest_float("x", 0, 1)
    print(f"trial {trial.number} started", flush=False)
    deadline = time.monotonic() + 30
    while not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.05)
    return x if os.path.exists("go") else float("nan")


class Carrying:
    """An objective carrying an array, as a notebook's closure over its training data does;
    `pickled` counts how often this process pickled one."""

    pickled = 0

    def __init__(self, payload):
        self.payload = payload

    def __call__(self, trial):
        time.sleep(0.05)
        return float(self.payload[trial.suggest_int("i", 0, len(self.payload) - 1)]) + trial.suggest_float("x", 0, 1)

    def __reduce__(self):
        type(self).pickled += 1
        return Carrying, (self.payload,)


def needs_memory(trial):
    """Trial 0 holds SF_ALLOC_BYTES of memory, touched, for half a second."""
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 0:
        import numpy as np

        block = np.ones(int(os.environ["SF_ALLOC_BYTES"]) // 8)
        time.sleep(0.5)
        return float(block[0]) * x
    return x


def stops_at_trial_3_of_slow_ones(trial):
    """0.3 s trials, each noting when it began in SF_STARTS; trial 3 calls
    `trial.study.stop()` as it begins, and notes when that returned."""
    with open(os.environ["SF_STARTS"], "a") as log:
        log.write(f"{trial.number} {time.time()}\n")
    if trial.number == 3:
        trial.study.stop()
        with open(os.environ["SF_STARTS"], "a") as log:
            log.write(f"stop {time.time()}\n")
    time.sleep(0.3)
    return trial.suggest_float("x", 0, 1)


def model_choices(trial):
    """An sklearn-style space: a define-by-run bool and a categorical mixing None, numbers and
    text (`max_features`), each used only by one classifier."""
    clf = trial.suggest_categorical("clf", ["svc", "rf"])
    if clf == "svc":
        shrinking = trial.suggest_categorical("shrinking", [True, False])
        return trial.suggest_float("c", 0.0, 1.0) + (0.5 if shrinking else 0.0)
    features = trial.suggest_categorical("max_features", [None, 0.5, 1.0, "sqrt"])
    return trial.suggest_int("depth", 1, 8) / 8 + (0.0 if features == 0.5 else 0.3)


def stages_then_sleeps(trial):
    """Writes a file into its artifact folder (staged until the trial completes), appends a
    line to $SF_COUNT_FILE, then sleeps $SF_SLEEP s: a kill then leaves a staging folder."""
    x = trial.suggest_float("x", 0, 1)
    (trial.artifact_dir / "model.bin").write_bytes(b"\0" * 100_000)
    with open(os.environ["SF_COUNT_FILE"], "a") as f:
        f.write(f"{trial.number}\n")
    time.sleep(float(os.environ.get("SF_SLEEP", "0")))
    return x


def killed_then_crashes_once(trial):
    """Per parameter value, in $SF_STATE_DIR: its first run (trial 0 only) sleeps until the test
    SIGKILLs the run, its second SIGKILLs its own worker, its third returns."""
    x = trial.suggest_float("x", 0, 1)
    state = os.path.join(os.environ["SF_STATE_DIR"], repr(x))
    step = int(open(state).read()) if os.path.exists(state) else 0
    with open(state, "w") as f:
        f.write(str(step + 1))
    if step == 0 and trial.number == 0:
        time.sleep(60)
    elif step == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def runs_a_child(trial):
    """Starts `sleep` (as an objective shells out to a training script: 600 s for trial 1, else
    60 s, or $SF_CHILD_S), writes its pid to $SF_CHILD_PIDS, and waits for it."""
    x = trial.suggest_float("x", 0, 1)
    seconds = "600" if trial.number == 1 else os.environ.get("SF_CHILD_S", "60")
    # $SF_CHILD_IGNORES_TERM: a program that ignores SIGTERM (one busy saving a checkpoint)
    ignores = ["sh", "-c", f"trap '' TERM; exec sleep {seconds}"] if os.environ.get("SF_CHILD_IGNORES_TERM") else []
    child = subprocess.Popen(ignores or ["sleep", seconds])
    with open(os.environ["SF_CHILD_PIDS"], "a") as f:
        f.write(f"{child.pid}\n")
    child.wait()
    return x
