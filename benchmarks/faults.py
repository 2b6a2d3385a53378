"""The fault table: each fault done to a real run, then the recovery a user would do.

Every row runs real processes (`studyflow run`, or `snakemake` on a copy of this workflow) on a
tiny random-search study whose objective (written to the run's folder) appends
`<time> <number> <x>` to an evaluation log as it starts each trial. Per fault:

- trials lost: trials the journal had COMPLETE before the fault (read right after it, before any
  recovery; for the corrupted journal, before the damage) that the final trials.parquet does
  not have COMPLETE with the same value. Must be 0.
- trials re-run: evaluations of a parameter set that had been evaluated before (log lines minus
  distinct x), i.e. work done twice.
- time to recover (s): from the fault to the first trial evaluation starting after it, recovery
  commands included (a rerun's start-up, `snakemake --unlock`, `studyflow journal repair`); for
  the hang, from the hang to its trial failing by `budget.trial_timeout_s`.

`recovery.py` times the worker-kill and resume paths in more detail (medians of repeats); this
table is one run per fault. Run on a shared, loaded 2-core machine: times are indicative only.

    python benchmarks/faults.py [--trials 24] [--only 'journal corrupted']
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

REPO = Path(__file__).resolve().parent.parent
SLEEP_S = 0.15
OBJECTIVE = '''
import math, os, signal, time

def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    with open(os.environ["FAULT_LOG"], "a") as f:
        f.write(f"{time.time()} {trial.number} {x!r}\\n")
    fault, at = os.environ.get("FAULT", ""), int(os.environ.get("FAULT_AT", "-1"))
    marker = os.environ.get("FAULT_MARKER", "")
    first = trial.number == at and marker and not os.path.exists(marker)
    if first:
        with open(marker, "w") as f:
            f.write(repr(time.time()))
    if first and fault == "kill_worker":
        os.kill(os.getpid(), signal.SIGKILL)
    if first and fault == "hang":
        time.sleep(600)
    if trial.number == at and fault == "raise":
        raise ValueError("injected")
    if trial.number == at and fault == "nan":
        return math.nan
    time.sleep(float(os.environ.get("FAULT_SLEEP", "0")))
    return x
'''


class Run:
    """One fault's folder: the study file, the objective, the evaluation log."""

    def __init__(self, root: Path, n_trials: int, snakemake: bool = False, **study: object) -> None:
        self.dir, self.n_trials, self.snakemake = root, n_trials, snakemake
        (root / "faultobj.py").write_text(OBJECTIVE)
        cfg = {"objective": "faultobj:objective", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
               "sampler": {"name": "random", "seed": 4}, "budget": {"n_trials": n_trials}} | study
        if snakemake:
            shutil.copy(REPO / "Snakefile", root)
            shutil.copytree(REPO / "workflow", root / "workflow")
            (root / "config/studies").mkdir(parents=True)
            (root / "config/config.yaml").write_text(yaml.safe_dump({"studies": ["study"]}))
            (root / "config/studies/study.yaml").write_text(yaml.safe_dump(cfg))
        else:
            (root / "study.yaml").write_text(yaml.safe_dump(cfg))
        self.log, self.marker = root / "evaluations.txt", root / "fault.marker"
        self.env = dict(os.environ, FAULT_LOG=str(self.log), FAULT_MARKER=str(self.marker),
                        FAULT_SLEEP=str(SLEEP_S),
                        PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))

    def start(self, fault: str = "", at: int = -1, **kwargs: object) -> subprocess.Popen:
        env = self.env | {"FAULT": fault, "FAULT_AT": str(at)}
        cmd = ([sys.executable, "-m", "snakemake", "-c2"] if self.snakemake
               else [sys.executable, "-m", "studyflow.cli", "run", "study.yaml", "--workers", "2"])
        return subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, **kwargs)

    def finish(self, proc: subprocess.Popen, expect_ok: bool = True) -> str:
        out, _ = proc.communicate(timeout=600)
        if expect_ok and proc.returncode != 0:
            raise RuntimeError(f"run failed ({proc.returncode}): {out[-2000:]}")
        return out

    def evaluations(self) -> list[tuple[float, int, float]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines() if line.strip()]
        return [(float(t), int(n), float(x)) for t, n, x in rows]

    def wait_for(self, n: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 300
        while len(self.evaluations()) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the run ended or stalled before {n} evaluations")
            time.sleep(0.05)

    @property
    def store(self) -> Path:
        return self.dir / "results/.store"

    def journal(self) -> Path:
        return next((self.store / "journals").glob("study-*.log"))

    def told(self, before: float | None = None) -> dict[int, float]:
        """COMPLETE trials in the journal now (finished before `before`): number -> value."""
        storage = JournalStorage(JournalFileBackend(str(self.journal())))
        study = optuna.load_study(study_name="study", storage=storage)
        return {t.number: t.values[0] for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE
                and (before is None or t.datetime_complete.timestamp() < before)}

    def wait_unlocked(self) -> None:
        """An orphaned driver (its snakemake killed) stops by itself: wait for its study lock."""
        from studyflow.store._gc import running_studies

        deadline = time.monotonic() + 60
        while running_studies(self.store):
            if time.monotonic() > deadline:
                raise RuntimeError("the orphaned driver did not stop")
            time.sleep(0.2)

    def row(self, told: dict[int, float], fault_at: float, recover_s: float | None = None,
            since: int = 0) -> dict[str, object]:
        """The row's numbers; `since`: evaluations before it are the faulted run's (a killed
        run's orphans may still start trials after the fault), so recovery is timed from there."""
        table = pd.read_parquet(self.dir / "results/studies/study/trials.parquet")
        complete = table[table["state"] == "COMPLETE"].set_index("number")["value"].to_dict()
        lost = [n for n, v in told.items() if complete.get(n) != v]
        evals = self.evaluations()
        rerun = len(evals) - len({x for _, _, x in evals})
        if recover_s is None:
            later = [t for t, _, _ in evals[since:] if t > fault_at]
            recover_s = min(later) - fault_at if later else float("nan")
        return {"told before": len(told), "lost": len(lost), "lost numbers": lost[:8], "re-run": rerun,
                "recover_s": recover_s, "complete after": len(complete)}


def worker_kill(run: Run) -> dict[str, object]:
    proc = run.start("kill_worker", at=5)
    run.finish(proc)
    fault = float(run.marker.read_text())
    x = next(x for _, n, x in run.evaluations() if n == 5)
    retry = next(t for t, n, y in run.evaluations() if t > fault and y == x)
    return run.row(run.told(before=fault), fault, retry - fault) | {
        "how": "none: the server retries it (same params) on a live worker"}


def instant_worker_kill(run: Run) -> dict[str, object]:
    """The worker dies as an instant trial begins: its last outcomes, batched behind an exchange
    in flight, had not reached the server (before the loops' trails, those trials ran again and
    the crash was pinned on a trial that had returned)."""
    run.env["FAULT_SLEEP"] = "0"
    proc = run.start("kill_worker", at=40)
    run.finish(proc)
    fault = float(run.marker.read_text())
    table = pd.read_parquet(run.dir / "results/studies/study/trials.parquet")
    failed = table[table["state"] == "FAIL"]["number"].tolist()
    return run.row(run.told(before=fault), fault) | {
        "how": f"none: trial 40 fails and is retried; FAIL rows: {failed}"}


def objective_fault(run: Run, fault: str) -> dict[str, object]:
    proc = run.start(fault, at=5)
    run.finish(proc)
    fault_at = next(t for t, n, _ in run.evaluations() if n == 5)
    return run.row({}, fault_at) | {"how": "none: the trial is FAIL, the study goes on"}


def hang(run: Run) -> dict[str, object]:
    proc = run.start("hang", at=5)
    run.finish(proc)
    fault_at = float(run.marker.read_text())
    table = pd.read_parquet(run.dir / "results/studies/study/trials.parquet").set_index("number")
    failed_at = table.loc[5, "datetime_complete"].timestamp()
    # the restarted worker's first evaluation: of a trial run by a worker address not seen before
    old = set(table.loc[table["datetime_start"].map(lambda t: t.timestamp()) < fault_at, "worker"])
    new = set(table.index[~table["worker"].isin(old) & table["worker"].notna()])
    back = min((t for t, n, _ in run.evaluations() if n in new and t > failed_at), default=float("nan"))
    return run.row({}, fault_at, failed_at - fault_at) | {
        "how": f"none: budget.trial_timeout_s=2 fails it and restarts its worker (running trials "
               f"{back - failed_at:.2f} s after the timeout)"}


def sampler_raise(run: Run) -> dict[str, object]:
    started = time.time()
    out = run.finish(run.start(), expect_ok=False)
    told = run.told()
    stopped = time.time() - started
    ok = "raised 2 times in a row" in out
    # Recovery is a study-file fix (the sampler's options), which is a new study identity:
    # the table is the stopped run's journal, so "lost" compares the journal before and after.
    after = run.told()
    return {"told before": len(told), "lost": len([n for n in told if n not in after]), "lost numbers": [],
            "re-run": 0, "recover_s": float("nan"), "complete after": len(after),
            "how": f"none: the study stops ({'StudyAbortedError, sampler named' if ok else 'unexpected: ' + out[-200:]}) "
                   f"after {stopped:.1f} s; fix sampler.options and rerun"}


def killed_then_rerun(run: Run, which: str) -> dict[str, object]:
    proc = run.start(start_new_session=which in ("run", "terminal"))
    run.wait_for(run.n_trials // 2, proc)
    fault_at = time.time()
    if which == "optimize":
        pids = subprocess.run(["pgrep", "-f", "studyflow optimize"], capture_output=True, text=True).stdout.split()
        for pid in pids:
            if os.readlink(f"/proc/{pid}/cwd") == str(run.dir):
                os.kill(int(pid), signal.SIGKILL)
    elif which == "snakemake":
        proc.send_signal(signal.SIGKILL)
    elif which == "sigint":
        proc.send_signal(signal.SIGINT)
    elif which == "terminal":  # a terminal's Ctrl-C: the whole process group, workers too
        os.killpg(proc.pid, signal.SIGINT)
    run.finish(proc, expect_ok=False)
    run.wait_unlocked()
    told, since = run.told(), len(run.evaluations())
    if which == "snakemake":  # snakemake's own lock outlives a SIGKILL of snakemake
        subprocess.run([sys.executable, "-m", "snakemake", "--unlock", "-c1"], cwd=run.dir, check=True,
                       capture_output=True, env=run.env)
    run.finish(run.start())
    how = {"optimize": "rerun snakemake", "snakemake": "snakemake --unlock, rerun",
           "sigint": "rerun studyflow run", "terminal": "rerun studyflow run"}[which]
    storage = JournalStorage(JournalFileBackend(str(run.journal())))
    lost_workers = sum("WorkerLost" in str(t.system_attrs.get("studyflow:error"))
                       for t in optuna.load_study(study_name="study", storage=storage).trials)
    return run.row(told, fault_at, since=since) | {"how": f"{how} ({lost_workers} trials failed as WorkerLost)"}


def disk_full(run: Run, limit: int = 200_000) -> dict[str, object]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run.start(preexec_fn=apply)
    out = run.finish(proc, expect_ok=False)
    fault_at = time.time()
    told, since = run.told(), len(run.evaluations())
    tracebacks = out.count("Traceback (most recent call last)")
    run.finish(run.start())
    return run.row(told, fault_at, since=since) | {"how": f"rerun with room (the full run: exit {proc.returncode}, "
                                             f"{tracebacks} tracebacks)"}


def corrupted(run: Run) -> dict[str, object]:
    run.finish(run.start())
    told = run.told()
    journal = run.journal()
    lines = journal.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    journal.write_bytes(b"".join(lines[:middle]) + b"\0" * (len(lines[middle]) - 1) + b"\n"
                        + b"".join(lines[middle + 1:]))
    fault_at, since = time.time(), len(run.evaluations())
    stopped = run.finish(run.start(), expect_ok=False)
    assert "unreadable journal record" in stopped, stopped[-1000:]
    started = time.monotonic()
    repaired = subprocess.run([sys.executable, "-m", "studyflow.cli", "journal", "repair", str(journal)],
                              cwd=run.dir, check=True, capture_output=True, text=True, env=run.env)
    repair_s = time.monotonic() - started
    recovered = next(line.split()[1] for line in repaired.stdout.splitlines() if line.startswith("recovered "))
    run.finish(run.start())
    # Every told trial comes back from the store, so no evaluation may follow the fault: then
    # recovery lasts until the resumed run has finished.
    done_s = time.time() - fault_at if len(run.evaluations()) == since else None
    return run.row(told, fault_at, done_s, since=since) | {
        "how": f"rerun stops in one line; journal repair ({repair_s:.1f} s: re-adds {recovered} trials "
               "from the trial store); rerun"}


FAULTS = {
    "worker SIGKILL": lambda d, n: worker_kill(Run(d, n)),
    "worker SIGKILL as an instant trial begins": lambda d, n: instant_worker_kill(Run(d, max(n, 80))),
    "`optimize` SIGKILLed (under snakemake)": lambda d, n: killed_then_rerun(Run(d, n, snakemake=True), "optimize"),
    "snakemake SIGKILLed": lambda d, n: killed_then_rerun(Run(d, n, snakemake=True), "snakemake"),
    "Ctrl-C (SIGINT to `studyflow run`)": lambda d, n: killed_then_rerun(Run(d, n), "sigint"),
    "Ctrl-C in a terminal (SIGINT to its process group)": lambda d, n: killed_then_rerun(Run(d, n), "terminal"),
    "objective raises": lambda d, n: objective_fault(Run(d, n), "raise"),
    "objective returns NaN": lambda d, n: objective_fault(Run(d, n), "nan"),
    "objective hangs": lambda d, n: hang(Run(d, max(n, 60), budget={"n_trials": max(n, 60), "trial_timeout_s": 2})),
    "sampler raises": lambda d, n: sampler_raise(Run(d, n, sampler={
        "name": "tpe", "seed": 1, "options": {"n_startup_trials": 3, "n_ei_candidates": 0}},
        budget={"n_trials": n, "retries": 1})),
    "disk full (RLIMIT_FSIZE 200 kB)": lambda d, n: disk_full(Run(d, 400)),
    "journal corrupted mid-file": lambda d, n: corrupted(Run(d, n)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--only", default=None, help="run the faults whose name contains this")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    for name, fault in FAULTS.items():
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            try:
                row = fault(Path(tmp), args.trials)
            except Exception as exc:  # a fault whose recovery failed is a row too
                row = {"how": f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"}
            row["wall_s"] = time.monotonic() - started
        rows.append((name, row))
        print(name, json.dumps(row, default=str), file=sys.stderr, flush=True)
    print(f"\n{args.trials} trials of {SLEEP_S} s (400 instant for the disk), random sampler, 2 workers\n")
    print("| fault | recovery | told COMPLETE before | trials lost | trials re-run | time to recover (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        recover = r.get("recover_s")
        recover = "—" if recover is None or recover != recover else f"{recover:.2f}"
        lost = r.get("lost", "?")
        if lost:
            lost = f"**{lost}** ({r.get('lost numbers')})"
        print(f"| {name} | {r['how']} | {r.get('told before', '?')} | {lost} | {r.get('re-run', '?')} | {recover} |")


if __name__ == "__main__":
    main()
