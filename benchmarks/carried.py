"""An objective carrying a large array (a notebook's closure over its training data), whole process.

`studyflow.optimize` of a closure over a 200 MB float array (200 trials of 0.01 s, random
search) on 2, 4 and 8 local workers; beside it, plain Optuna's `study.optimize(n_jobs=...)`
with the same closure in one process (threads share the array). Every run is a fresh process
timed from launch to exit (after one unmeasured round, which writes the bytecode caches), and
checks its own trial count; the peak is the driver's own (`ru_maxrss`). With --before REF the studyflow rows also run at that commit (a git worktree).

    python benchmarks/carried.py [--repeats 3] [--mb 200] [--workers 2,4,8] [--before 507936c]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from worktree import add_worktree
from worktree import remove_worktree

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import sys, time
    import numpy as np

    X = np.random.default_rng(0).random({n})

    def objective(trial):
        time.sleep(0.01)
        return float(X[trial.suggest_int("i", 0, len(X) - 1)])

    if __name__ == "__main__":
        runner, workers = sys.argv[1], int(sys.argv[2])
        if runner == "studyflow":
            import studyflow
            study = {{"name": "carried", "sampler": {{"name": "random", "seed": 0}}, "budget": {{"n_trials": 200}}}}
            result = studyflow.optimize(objective, study, n_workers=workers, results_dir=sys.argv[3], progress=False)
            done = int((result.trials["state"] == "COMPLETE").sum())
        else:
            import optuna
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
            study.optimize(objective, n_trials=200, n_jobs=workers)
            done = len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]))
        print(done)
''')


def measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, the driver's peak RSS in MB, stdout). The peak is `ru_maxrss` as `wait4`
    reports it, as GNU time's %M: the largest of the process and the descendants it waited
    for (its workers hold one copy each, less than the driver)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout.read() if proc.stdout else ""
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped above
    return time.perf_counter() - started, usage.ru_maxrss / 1e3, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--workers", default="2,4,8")
    parser.add_argument("--before", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "carried.py").write_text(SCRIPT.format(n=args.mb * 1_000_000 // 8))
        versions = [("studyflow", REPO / "src")]
        if args.before:
            versions.append((f"studyflow at {args.before}", add_worktree(args.before, work / "before")))
        try:
            for workers in map(int, args.workers.split(",")):
                runners = [(label, "studyflow", src) for label, src in versions]
                runners.append(("Optuna, one process, n_jobs threads", "optuna", None))
                runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in runners}
                for repeat in range(-1, args.repeats):  # runners take turns; round -1 warms the caches
                    for index, (label, runner, src) in enumerate(runners):
                        # bytecode caches written, as on a user's machine (startup.py's `_cached_bytecode`)
                        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                               "PYTHONPATH": str(src or REPO / "src")}
                        results = str(work / f"results-{workers}-{index}-{repeat}")  # a fresh study every run
                        wall, peak, out = measured([sys.executable, "carried.py", runner, str(workers), results],
                                                   work, env)
                        assert out.split() and int(out.split()[-1]) == 200, f"{label}: {out!r}"
                        if repeat >= 0:
                            runs[label].append((wall, peak))
                for label, _, _ in runners:
                    rows.append((workers, label, statistics.median(w for w, _ in runs[label]),
                                 statistics.median(p for _, p in runs[label])))
                    print(f"{workers} workers | {label}: {rows[-1][2]:.2f} s, {rows[-1][3]:.0f} MB", file=sys.stderr)
        finally:
            if args.before:
                remove_worktree(work / "before")
    print(f"\nan objective carrying {args.mb} MB, 200 trials of 0.01 s, whole processes, median of "
          f"{args.repeats}; {os.cpu_count()} cores\n")
    print("| workers | runner | wall s | driver's peak RSS, MB | checked |")
    print("| ---: | --- | ---: | ---: | --- |")
    for workers, label, wall, peak in rows:
        print(f"| {workers} | {label} | {wall:.2f} | {peak:.0f} | 200 COMPLETE |")


if __name__ == "__main__":
    main()
