"""Worker-job utilisation over a SLURM study: the share of allocated worker-seconds that ran trials.

Runs the same study (`cluster: {mode: slurm, jobs: 2, cores: 1}`, 0.5 s trials) with studyflow at
two commits, each as its own driver process against the SLURM of `.ci/slurm-local.sh`: `before`
(efa012b, where trial loops were fixed at the workers up at the start) and `now` (the working
tree, where loops follow workers). Two cases: both worker jobs released at once, and the second
released 5 s after the first. Allocated seconds come from `sacct` (each job's elapsed time);
busy seconds are the trials' durations, counted per job. Needs a running SLURM; prints a table.

    python benchmarks/slurm_utilisation.py [--before efa012b] [--trials 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from worktree import add_worktree
from worktree import remove_worktree

REPO = Path(__file__).resolve().parent.parent

OBJECTIVE = textwrap.dedent('''
    import time

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        time.sleep(0.5)
        return x
''')

DRIVER = textwrap.dedent('''
    import json, sys
    import dask_jobqueue  # installs its signal handler on the main thread
    from studyflow import optimize

    study = json.loads(sys.argv[1])
    result = optimize(None, study, results_dir=sys.argv[2], progress=False)
    trials = result.trials
    done = trials[trials["state"] == "COMPLETE"]
    print(json.dumps({"complete": int(len(done)), "busy": done.groupby("worker")["duration_s"].sum().to_dict()}))
''')


def _jobs_of(user_tag: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--me", "-o", "%i %j"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if user_tag in line)


def run_case(src: Path, work: Path, n_trials: int, late_s: float | None) -> dict[str, float]:
    """One study; returns trials COMPLETE, allocated and busy worker-seconds, workers that ran trials."""
    (work / "bench_objective.py").write_text(OBJECTIVE)
    tag = f"sfu{int(time.time() * 1000) % 10**6}"
    cluster = {"mode": "slurm", "jobs": 2, "cores": 1, "memory": "1GB", "walltime": "00:15:00",
               "job_extra_directives": [f"--job-name={tag}", *(["--hold"] if late_s is not None else [])]}
    study = {"objective": "bench_objective:objective", "search_space": {}, "budget": {"n_trials": n_trials},
             "cluster": cluster}
    env = {"PYTHONPATH": f"{src}:{work}", "PATH": subprocess.os.environ["PATH"], "HOME": str(work)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(study), str(work / "results")],
                              cwd=work, env=env, stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    if late_s is not None:
        deadline = time.monotonic() + 120
        while len(seen := _jobs_of(tag)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(["scontrol", "release", seen[0]], check=True)
        time.sleep(late_s)
        subprocess.run(["scontrol", "release", seen[1]], check=True)
    out, _ = driver.communicate(timeout=900)
    outcome = json.loads(out.strip().splitlines()[-1])
    time.sleep(2)  # sacct's end times settle once the jobs are cancelled
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-S", "now-1hour", "--name", tag, "-o", "JobID,ElapsedRaw"],
                          capture_output=True, text=True, check=True).stdout
    allocated = sum(float(line.split("|")[1]) for line in acct.splitlines() if line)
    return {"complete": outcome["complete"], "allocated": allocated, "busy": sum(outcome["busy"].values()),
            "workers": len(outcome["busy"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="efa012b")
    parser.add_argument("--trials", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        add_worktree(args.before, before)
        try:
            rows = []
            for case, late in (("jobs released together", None), ("second job 5 s late", 5.0)):
                for label, src in (("before " + args.before, before / "src"), ("now", REPO / "src")):
                    work = Path(tmp) / f"{label.split()[0]}-{late}"
                    work.mkdir()
                    r = run_case(src, work, args.trials, late)
                    assert r["complete"] == args.trials, r
                    rows.append((case, label, r))
        finally:
            remove_worktree(before)
    print(f"\n{args.trials} trials of 0.5 s, 2 SLURM worker jobs of 1 worker each\n")
    print("| case | code | workers that ran trials | allocated worker-s | busy worker-s | utilisation |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for case, label, r in rows:
        print(f"| {case} | {label} | {r['workers']} | {r['allocated']:.0f} | {r['busy']:.1f} | "
              f"{r['busy'] / r['allocated']:.0%} |")


if __name__ == "__main__":
    main()
