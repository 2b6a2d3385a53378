"""Whole processes, start to exit: what a user waits for, cluster start and close included.

Every row is a fresh process timed from launch to exit (median of --repeats), and checks its
own trial count; the runners of a case take turns within each repeat. Rows:
  one trial     `studyflow run` of a 1-trial study on 2 and 8 local workers.
  instant       5,000 instant trials, random search, 2 workers: `studyflow run` with the space in
                the study file, and define-by-run; Optuna with a JournalFileBackend shared by 2
                processes; Optuna in one process, in memory.
  grid          a 5,000-point grid (50 x 100) of instant trials, 2 workers: `studyflow run`; Optuna's
                GridSampler with a JournalFileBackend shared by 2 processes, and in one process, in
                memory (its tells read every trial: quadratic in the grid's size).
  tpe           800 TPE trials of 0.1 s on Hartmann-6, 8 workers (ideal 10.0 s): `studyflow run`
                with the space in the study file, and define-by-run (each suggest asks the
                server); Optuna with a JournalFileBackend shared by 8 processes.
  snakemake     the default workflow (`snakemake -c8`, 40 HGB trials) in a fresh copy of the repo;
                with how long `scontrol show config` takes here (`slurm_config_wait`).
With --before REF the studyflow rows also run at that commit (a git worktree), for before/after.

    python benchmarks/startup.py [--repeats 3] [--rows one,instant,grid,tpe,snakemake] [--before efa012b]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from worktree import add_worktree
from worktree import remove_worktree

REPO = Path(__file__).resolve().parent.parent

OBJECTIVES = textwrap.dedent('''
    import time

    import numpy as np

    A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
    P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
    ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
    GRID = {"x": list(range(1, 51)), "y": list(range(1, 101))}  # grid_point's, as Optuna's GridSampler takes it


    def instant(trial):
        return trial.suggest_float("x", 0, 1) ** 2


    def grid_point(trial):
        return trial.suggest_int("x", 1, 50) * 0.01 + trial.suggest_int("y", 1, 100)


    def hartmann6_100ms(trial):
        x = np.array([trial.suggest_float(f"x{i}", 0, 1) for i in range(6)])
        time.sleep(0.1)
        return float(-(ALPHA * np.exp(-(A * (x - P) ** 2).sum(axis=1))).sum())
''')

# The usual multi-process recipe: one Optuna study in a journal file, N processes optimizing it.
JOURNAL_RUNNER = textwrap.dedent('''
    import multiprocessing, sys
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    import bench_objectives

    path, procs, n_trials, sampler, objective = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

    def storage():
        return JournalStorage(JournalFileBackend(path))

    def make_sampler():
        if sampler == "grid":
            return optuna.samplers.GridSampler(bench_objectives.GRID)
        return optuna.samplers.TPESampler() if sampler == "tpe" else optuna.samplers.RandomSampler()

    def work(n):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.load_study(study_name="bench", storage=storage(), sampler=make_sampler())
        study.optimize(getattr(bench_objectives, objective), n_trials=n)

    if __name__ == "__main__":
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        optuna.create_study(study_name="bench", storage=storage())
        workers = [multiprocessing.Process(target=work, args=(n_trials // procs,)) for _ in range(procs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done = optuna.load_study(study_name="bench", storage=storage()).get_trials(states=[optuna.trial.TrialState.COMPLETE])
        print(len(done))
''')

IN_MEMORY = textwrap.dedent('''
    import sys
    import optuna
    import bench_objectives

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if sys.argv[2:] == ["grid"]:
        study = optuna.create_study(sampler=optuna.samplers.GridSampler(bench_objectives.GRID))
        study.optimize(bench_objectives.grid_point, n_trials=int(sys.argv[1]))
    else:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler())
        study.optimize(bench_objectives.instant, n_trials=int(sys.argv[1]))
    print(len(study.trials))
''')


def _cached_bytecode(env: dict[str, str]) -> dict[str, str]:
    """`env` with Python writing its bytecode caches, as on a user's machine: with
    PYTHONDONTWRITEBYTECODE set (some CI images set it), every run compiles each module changed
    since its cache was written, and the version at --before compiles all of studyflow."""
    return {name: value for name, value in env.items() if name != "PYTHONDONTWRITEBYTECODE"}


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        logs = "".join(f"\n--- {log}\n{log.read_text()[-2000:]}" for log in sorted(cwd.glob("logs/**/*.log")))
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}{logs}")
    return wall, proc.stdout


def _complete(results: Path, study: str) -> int:
    import pandas as pd

    trials = pd.read_parquet(results / "studies" / study / "trials.parquet")
    return int((trials["state"] == "COMPLETE").sum())


Runner = tuple[str, Callable[[], float], str]  # (label, one measured run, what it checked)


class Bench:
    """Each case's runners take turns within every repeat (A, B, C, A, B, C, ...), so a
    stretch where the machine runs slower, which on this kind of machine lasts minutes, falls
    on all of them alike rather than on whichever ran then."""

    def __init__(self, work: Path, repeats: int) -> None:
        self.work, self.repeats = work, repeats
        (work / "bench_objectives.py").write_text(OBJECTIVES)
        (work / "journal_runner.py").write_text(JOURNAL_RUNNER)
        (work / "in_memory.py").write_text(IN_MEMORY)
        self.rows: list[tuple[str, str, float, str]] = []
        self.shims = work / "bin"
        self.shims.mkdir()
        (self.shims / "studyflow").write_text(f"#!/bin/sh\nexec {sys.executable} -m studyflow.cli \"$@\"\n")
        (self.shims / "studyflow").chmod(0o755)
        self.studies = 0

    def env(self, src: Path | None = None) -> dict[str, str]:
        paths = [str(self.work)] + ([str(src)] if src else [])
        return _cached_bytecode({**os.environ, "PYTHONPATH": os.pathsep.join(paths)})

    def case(self, case: str, runners: list[Runner]) -> None:
        walls: dict[str, list[float]] = {label: [] for label, _, _ in runners}
        for _ in range(self.repeats):
            for label, run, _ in runners:
                walls[label].append(run())
        for label, _, checked in runners:
            self.add((case, label, statistics.median(walls[label]), checked))

    def studyflow(self, label: str, study: dict, workers: int, src: Path | None = None) -> Runner:
        import yaml

        name = f"s{self.studies}"
        self.studies += 1
        (self.work / f"{name}.yaml").write_text(yaml.safe_dump({**study, "name": name}))

        def run() -> float:
            results = self.work / f"results-{name}"
            shutil.rmtree(results, ignore_errors=True)
            cmd = [sys.executable, "-m", "studyflow.cli", "run", f"{name}.yaml", "--workers", str(workers),
                   "--results", str(results)]
            wall, _ = _timed(cmd, self.work, self.env(src))
            n = _complete(results, name)
            assert n == study["budget"]["n_trials"], f"{label}: {n} COMPLETE"
            return wall

        return label, run, f"{study['budget']['n_trials']} COMPLETE"

    def script(self, label: str, cmd: list[str], expect: int) -> Runner:
        def run() -> float:
            for stale in self.work.glob("journal*.log*"):
                stale.unlink()
            wall, out = _timed(cmd, self.work, self.env())
            assert int(out.split()[-1]) == expect, f"{label}: {out.strip()}"
            return wall

        return label, run, f"{expect} COMPLETE"

    def snakemake(self, label: str, repo: Path) -> Runner:
        copies = iter(range(10**6))

        def run() -> float:
            copy = self.work / f"wf-{label.replace(' ', '-')}-{next(copies)}"
            shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(
                ".git", ".venv", "results", "logs", ".snakemake", "tests", "benchmarks", "*.out", "__pycache__"))
            # the workflow's `studyflow` commands run the version under test, whatever the
            # console script installed in this environment points at
            env = _cached_bytecode({**os.environ, "PYTHONPATH": str(repo / "src"),
                                    "PATH": f"{self.shims}{os.pathsep}{os.environ['PATH']}"})
            wall, _ = _timed(["snakemake", "-c8", "--quiet"], copy, env)
            n = _complete(copy / "results", "hgb_breast_cancer")
            assert n == 40 and (copy / "results" / "reports" / "hgb_breast_cancer.html").is_file(), n
            shutil.rmtree(copy)
            return wall

        return label, run, "40 COMPLETE, card written"

    def add(self, row: tuple[str, str, float, str]) -> None:
        """Keep a row, and show it at once (a later case that fails loses nothing measured)."""
        self.rows.append(row)
        print(f"{row[0]} | {row[1]}: {row[2]:.2f} s", file=sys.stderr, flush=True)


def slurm_config_wait() -> str:
    """What every `snakemake` here waits for before it reads the workflow: while Snakemake loads
    its executor plugins, snakemake-executor-plugin-slurm runs `scontrol show config` where SLURM
    is installed (up to its 10 s timeout when the controller cannot be reached)."""
    if shutil.which("scontrol") is None:
        return "no `scontrol` here: the SLURM plugin loads without asking SLURM"
    started = time.perf_counter()
    done = subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30)
    answer = "answered" if done.returncode == 0 else f"failed (exit {done.returncode})"
    return f"`scontrol show config`, which the SLURM plugin runs as Snakemake starts, {answer} in " \
           f"{time.perf_counter() - started:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default="one,instant,grid,tpe,snakemake")
    parser.add_argument("--before", default=None, help="also run the studyflow rows at this commit")
    args = parser.parse_args()
    rows = args.rows.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench = Bench(work, args.repeats)
        versions = [("studyflow", None)]
        if args.before:
            versions.append((f"studyflow at {args.before}", add_worktree(args.before, work / "before")))
        runner = [sys.executable, "journal_runner.py", str(work / "journal.log")]
        try:
            instant = {"objective": "bench_objectives:instant", "sampler": {"name": "random", "seed": 0}}
            if "one" in rows:
                for workers in (2, 8):
                    one = {**instant, "budget": {"n_trials": 1}}
                    bench.case(f"1-trial study, {workers} workers", [
                        *(bench.studyflow(label, one, workers, src) for label, src in versions),
                        *([bench.script("Optuna, one process, journal file", [*runner, "1", "1", "random", "instant"], 1)]
                          if workers == 2 else [])])
            if "instant" in rows:
                space = {"x": {"type": "float", "low": 0, "high": 1}}
                bench.case("5,000 instant trials, 2 workers", [
                    *(run for label, src in versions for run in (
                        bench.studyflow(f"{label}, search_space",
                                        {**instant, "search_space": space, "budget": {"n_trials": 5000}}, 2, src),
                        bench.studyflow(f"{label}, define-by-run", {**instant, "budget": {"n_trials": 5000}}, 2, src))),
                    bench.script("Optuna, journal file shared by 2 processes", [*runner, "2", "5000", "random", "instant"], 5000),
                    bench.script("Optuna in one process, in memory", [sys.executable, "in_memory.py", "5000"], 5000)])
            if "grid" in rows:
                grid = {"objective": "bench_objectives:grid_point", "sampler": {"name": "grid", "seed": 0},
                        "search_space": {"x": {"type": "int", "low": 1, "high": 50},
                                         "y": {"type": "int", "low": 1, "high": 100}},
                        "budget": {"n_trials": 5000}}
                bench.case("5,000-point grid of instant trials, 2 workers", [
                    *(bench.studyflow(label, grid, 2, src) for label, src in versions),
                    bench.script("Optuna, journal file shared by 2 processes", [*runner, "2", "5000", "grid", "grid_point"], 5000),
                    bench.script("Optuna in one process, in memory", [sys.executable, "in_memory.py", "5000", "grid"], 5000)])
            if "tpe" in rows:
                tpe = {"objective": "bench_objectives:hartmann6_100ms", "sampler": {"name": "tpe"},
                       "budget": {"n_trials": 800}}
                space = {f"x{i}": {"type": "float", "low": 0, "high": 1} for i in range(6)}
                bench.case("800 x 0.1 s TPE trials, 8 workers (ideal 10.0 s)", [
                    *(run for label, src in versions for run in (
                        bench.studyflow(f"{label}, search_space", {**tpe, "search_space": space}, 8, src),
                        bench.studyflow(f"{label}, define-by-run", tpe, 8, src))),
                    bench.script("Optuna, journal file shared by 8 processes", [*runner, "8", "800", "tpe", "hartmann6_100ms"], 800)])
            if "snakemake" in rows:
                slurm_wait = slurm_config_wait()
                print(slurm_wait, file=sys.stderr, flush=True)
                bench.case("default `snakemake -c8`", [
                    bench.snakemake(label, REPO if src is None else src.parent) for label, src in versions])
        finally:
            if args.before:
                remove_worktree(work / "before")
    print(f"\nwhole processes, launch to exit, median of {args.repeats}, runners of a case in turns; "
          f"{os.cpu_count()} cores\n")
    print("| case | runner | wall s | checked |")
    print("| --- | --- | ---: | --- |")
    for case, label, wall, checked in sorted(bench.rows, key=lambda r: r[0]):
        print(f"| {case} | {label} | {wall:.2f} | {checked} |")
    if "snakemake" in rows:
        print(f"\n{slurm_wait}")


if __name__ == "__main__":
    main()
