"""studyflow against what users would pick instead, in one script on one machine.

Sections (each prints a markdown table; medians of --repeats):
  overhead  instant objective, RandomSampler, 2 and 4 workers: studyflow; Optuna with a
            JournalFileBackend or SQLite shared by worker processes; optuna_integration's
            DaskStorage on the same LocalCluster; a driver submitting one Dask task per trial.
  history   TPE with 1,000 / 5,000 finished trials: ms per trial beyond the sampler's own time.
  scaling   100 ms sleep objective on 1, 2, 4, 8 workers: efficiency = ideal / measured wall.
  memory    peak RSS of the process holding the study (the scheduler) for a 10,000-trial study.

    python benchmarks/compare.py [--sections overhead,history,scaling,memory] [--trials 2000]
        [--scaling-trials 2000] [--repeats 3]      # DaskStorage needs: pip install optuna-integration
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from overhead import run_studyflow  # the same runs as benchmarks/overhead.py: optimize() alone is timed
from overhead import run_task_per_trial
from studyflow import optimize
from studyflow.config import ClusterConfig
from studyflow.driver import connect
from studyflow.optuna_ext import CachedFitTPESampler

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def instant(trial):
    return trial.suggest_float("x", 0, 1) ** 2


def sleep_100ms(trial):
    time.sleep(0.1)
    return trial.suggest_float("x", 0, 1)


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


# --- overhead --------------------------------------------------------------------------------

def _optuna_worker(storage_url: str, n_trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if storage_url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(storage_url.removeprefix("journal:")))
    else:
        storage = storage_url
    study = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler())
    study.optimize(instant, n_trials=n_trials)


def run_shared_storage(kind: str, workers: int, n_trials: int) -> None:
    """Worker processes sharing one Optuna storage, the usual multi-process recipe."""
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "journal":
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            url = f"journal:{tmp}/journal.log"
            optuna.create_study(study_name="bench", storage=JournalStorage(JournalFileBackend(f"{tmp}/journal.log")))
        else:
            url = f"sqlite:///{tmp}/bench.db"
            optuna.create_study(study_name="bench", storage=url)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_optuna_worker, args=(url, n_trials // workers)) for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()


def _dask_storage_task(storage, n_trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler())
    study.optimize(instant, n_trials=n_trials)


def run_dask_storage(client, workers: int, n_trials: int) -> None:
    from optuna_integration import DaskStorage

    storage = DaskStorage(client=client)
    optuna.create_study(study_name="bench", storage=storage)
    futures = [client.submit(_dask_storage_task, storage, n_trials // workers, pure=False) for _ in range(workers)]
    client.gather(futures)


def section_overhead(args) -> None:
    print(f"\n## Coordination overhead: {args.trials} instant trials, RandomSampler\n")
    print("| workers | runner | trials/s | ms/trial | studyflow speed-up |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for workers in (2, 4):
        times: dict[str, list[float]] = {}
        skipped: set[str] = set()
        # Every runner once per repeat: this machine's speed drifts by tens of percent over
        # minutes, and a ratio should compare runs taken close together. The shared-storage
        # runners run with no cluster up (an idle one takes 11-16% of a core here).
        for _ in range(args.repeats):
            with connect(workers) as client:
                for n_trials, record in ((50, False), (args.trials, True)):  # 50: warm the workers
                    cluster_runs = {
                        "studyflow": lambda: run_studyflow(client, n_trials),
                        "one Dask task per trial": lambda: _timed(run_task_per_trial, client, n_trials, workers),
                        "optuna_integration DaskStorage": lambda: _timed(run_dask_storage, client, workers, n_trials),
                    }
                    for name, run in cluster_runs.items():
                        try:
                            wall = run()
                        except ImportError:  # optuna-integration not installed
                            skipped.add(name)
                            continue
                        if record:
                            times.setdefault(name, []).append(wall)
            # TLS's cost (local clusters speak TLS by default): the same runs over plain TCP
            with connect(workers, cluster=ClusterConfig(tls=False)) as client:
                run_studyflow(client, 50)
                times.setdefault("studyflow, plain TCP (cluster.tls: false)", []).append(
                    run_studyflow(client, args.trials))
            times.setdefault("Optuna + JournalFileBackend, shared", []).append(
                _timed(run_shared_storage, "journal", workers, args.trials))
            times.setdefault("Optuna + SQLite, shared", []).append(
                _timed(run_shared_storage, "sqlite", workers, args.trials))
        ours = statistics.median(times["studyflow"])
        for name, values in times.items():
            wall = statistics.median(values)
            print(f"| {workers} | {name} | {args.trials / wall:.0f} | {1000 * wall / args.trials:.2f} | "
                  f"{wall / ours:.1f}x |")
        for name in sorted(skipped):  # a baseline left out says so, in the table
            print(f"| {workers} | {name} | not run: pip install -e '.[bench]' | | |")


# --- history ---------------------------------------------------------------------------------

def _sampler_alone_ms(sampler: optuna.samplers.BaseSampler, frozen: list, new: int) -> float:
    """A sampler's ask + tell per trial on an in-memory study holding `frozen`."""
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    alone = optuna.create_study(sampler=sampler)
    alone.add_trials(frozen)
    start = time.perf_counter()
    for _ in range(new):
        trial = alone.ask(dist)
        alone.tell(trial, trial.params["x"] ** 2)
    return 1000 * (time.perf_counter() - start) / new


def _studyflow_after_history_ms(frozen: list, new: int, prefetch: int | None = None) -> float:
    """studyflow's ms per trial for `new` trials of a study whose journal holds `frozen`
    (`prefetch: 0`: each trial is sampled after the one before is told)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from studyflow.config import load_study
    from studyflow.driver import ResultsLayout
    from studyflow.driver._run import _key_base

    history = len(frozen)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_study({"objective": "compare:instant", "search_space": SPACE, "name": "history",
                          "sampler": {"name": "tpe", "seed": 0}, "budget": {"n_trials": history + new},
                          "prefetch": prefetch})
        journal = ResultsLayout(Path(tmp)).journal(cfg, _key_base(cfg, instant, instant, None))
        journal.parent.mkdir(parents=True)
        pre = optuna.create_study(study_name="history", storage=JournalStorage(JournalFileBackend(str(journal))))
        pre.add_trials(frozen)
        with connect(1) as client:
            result = optimize(instant, cfg, client=client, results_dir=tmp, progress=False)
        fresh = result.trials[result.trials["number"] >= history]
        span = (fresh["datetime_complete"].max() - fresh["datetime_start"].min()).total_seconds()
        return 1000 * span / len(fresh)


def section_history(args) -> None:
    """Overhead beyond the sampler = studyflow's ms per trial - its own TPE's ask + tell alone
    (timed just before and just after, averaged; the median of each repeat's difference).

    studyflow runs `studyflow.tpe.CachedFitTPESampler` (TPESampler's proposals, less Python
    work per ask); Optuna's `TPESampler` alone is shown for reference. With one worker and
    instant trials the server samples each next trial while the reply travels (so it is sampled
    with one trial running); `prefetch: 0` samples each after the one before is told.
    """
    new = args.history_new
    print(f"\n## Overhead at scale of history: TPE, 1 worker, {new} new trials, median of {args.repeats}\n")
    print("| finished trials | studyflow ms/trial | its TPE alone ms/trial | overhead ms/trial "
          "| studyflow, prefetch 0 | overhead, prefetch 0 | Optuna TPESampler alone ms/trial |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for history in (1000, 5000):
        dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
        frozen = [
            optuna.trial.create_trial(params={"x": (i * 0.6180339887) % 1.0}, distributions=dist,
                                      value=((i * 0.6180339887) % 1.0) ** 2)
            for i in range(history)
        ]
        ours, sequential, cached, stock = [], [], [], []
        for _ in range(args.repeats):
            before = _sampler_alone_ms(CachedFitTPESampler(seed=0), frozen, new)
            stock.append(_sampler_alone_ms(optuna.samplers.TPESampler(seed=0), frozen, new))
            ours.append(_studyflow_after_history_ms(frozen, new))
            sequential.append(_studyflow_after_history_ms(frozen, new, prefetch=0))
            # the machine's speed drifts within minutes: the sampler alone before and after
            cached.append((before + _sampler_alone_ms(CachedFitTPESampler(seed=0), frozen, new)) / 2)
        beyond = statistics.median(o - c for o, c in zip(ours, cached))
        beyond_seq = statistics.median(o - c for o, c in zip(sequential, cached))
        print(f"| {history} | {statistics.median(ours):.2f} | {statistics.median(cached):.2f} | {beyond:.2f} | "
              f"{statistics.median(sequential):.2f} | {beyond_seq:.2f} | {statistics.median(stock):.2f} |")


# --- scaling ---------------------------------------------------------------------------------

def section_scaling(args) -> None:
    n = args.scaling_trials
    print(f"\n## Scaling: {n} trials of a 100 ms sleep, RandomSampler, median of {args.repeats}\n")
    print("| workers | wall s | ideal s | efficiency | runs |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for workers in (1, 2, 4, 8):
        study = {"search_space": SPACE, "sampler": {"name": "random", "seed": 0}, "budget": {"n_trials": n}}
        walls = []
        for _ in range(args.repeats):
            with connect(workers) as client, tempfile.TemporaryDirectory() as tmp:
                walls.append(_timed(lambda: optimize(sleep_100ms, study, client=client, results_dir=tmp,
                                                     progress=False)))
        ideal, wall = n * 0.1 / workers, statistics.median(walls)
        runs = " ".join(f"{ideal / w:.1%}" for w in walls)
        print(f"| {workers} | {wall:.1f} | {ideal:.1f} | {ideal / wall:.1%} | {runs} |")


# --- memory ----------------------------------------------------------------------------------

_MEMORY_CHILD = """
import resource, sys, tempfile
sys.path.insert(0, {here!r})
import optuna
from compare import instant, SPACE
n = {n}
if {mode!r} == "studyflow":
    from studyflow import optimize
from studyflow.config import ClusterConfig
    with tempfile.TemporaryDirectory() as tmp:
        optimize(instant, {{"search_space": SPACE, "sampler": {{"name": "random", "seed": 0}},
                 "budget": {{"n_trials": n}}}}, n_workers=2, results_dir=tmp, progress=False)
else:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).optimize(instant, n_trials=n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def section_memory(args) -> None:
    n = 10_000
    print(f"\n## Memory: peak RSS of the process holding a {n}-trial study\n")
    print("| runner | peak RSS MB |")
    print("| --- | ---: |")
    here = str(Path(__file__).parent)
    for mode, label in (("studyflow", "studyflow driver + scheduler + study server"),
                        ("optuna", "plain Optuna, in-memory, one process (baseline)")):
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD.format(here=here, n=n, mode=mode)],
                             capture_output=True, text=True, check=True, cwd=here)
        print(f"| {label} | {out.stdout.strip().splitlines()[-1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="overhead,history,scaling,memory")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--scaling-trials", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--history-new", type=int, default=300, help="new trials after the history")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"python {sys.version.split()[0]}, optuna {optuna.__version__}, {os.cpu_count()} cores")
    for name in args.sections.split(","):
        globals()[f"section_{name}"](args)


if __name__ == "__main__":
    main()
