"""What SLURM says of the study's worker jobs: whether it would take one at all (`sbatch
--test-only`, before any is submitted), which are still queued or running (`squeue`), and how
one that ended did (`sacct`), for `_supervisor.SlurmSupervisor`."""

from __future__ import annotations

import subprocess
import tempfile
import time

from studyflow.errors import StudyflowError

ACCOUNTING_WAIT_S = 5.0  # how long an ended job's account may still read as not yet ended
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUED")


def check_submittable(job_script: str) -> None:
    """Ask SLURM whether it would take a worker job of this script, without submitting it
    (`sbatch --test-only`). One it refuses (an unknown partition or account, more CPUs or memory
    than any node has, a controller that does not answer) stops the study in one line, quoting
    sbatch: dask-jobqueue would retry the submission for good, logging a traceback each time."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
        script.write(job_script)
        script.flush()
        try:
            done = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True, timeout=120)
        except OSError as exc:  # no sbatch here, or one that cannot run
            raise StudyflowError(f"cluster.mode slurm: cannot run sbatch ({exc.strerror or exc}); is SLURM set up "
                                 "here?") from None
        except subprocess.TimeoutExpired:
            raise StudyflowError("SLURM did not answer `sbatch --test-only` for this study's worker job "
                                 "within 120 s") from None
    if done.returncode != 0:
        said = "; ".join(line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip())
        raise StudyflowError("SLURM refuses this study's worker job (cluster: queue, account, cores, memory, "
                             f"walltime, job_extra_directives; worker_resources GPU: --gres): "
                             f"{said or f'sbatch exit code {done.returncode}'}; it asks for {_asked(job_script)}")


def _asked(job_script: str) -> str:
    """The job's #SBATCH requests, but its name and log files: sbatch's "Requested node
    configuration is not available" is the same for too many cores and too much memory."""
    asked = [line.split(None, 1)[1].strip() for line in job_script.splitlines()
             if line.startswith("#SBATCH") and len(line.split(None, 1)) == 2]
    return " ".join(a for a in asked if not a.startswith(("-J", "-e", "-o", "--job-name", "--output", "--error")))


def slurm_says(job_id: str, wait_s: float = ACCOUNTING_WAIT_S) -> str:
    """SLURM's account of an ended job: its state, reason and exit code. The accounting
    database learns of a job's end after the controller does, so a job that `squeue` no longer
    lists may still read as live there (pending, running, ...): asked again for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "State,Reason,ExitCode"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "sacct gave no answer"
        state, reason, code = (out.splitlines()[0].split("|") + ["", ""])[:3] if out else ("unknown", "", "")
        if state not in LIVE_STATES or time.monotonic() > deadline:
            return f"state {state}, reason {reason or 'none'}, exit code {code or '?'}"
        time.sleep(0.25)


def live_slurm_jobs() -> set[str] | None:
    """The ids of this user's jobs SLURM still queues or runs (None: `squeue` gave no answer)."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "--me"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line.split()[0] for line in out.stdout.splitlines() if line.split()[-1] in LIVE_STATES}
