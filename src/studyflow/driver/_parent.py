"""Watching the processes above the driver: under Snakemake, a driver whose job was killed
stops instead of running on beside the rerun."""

from __future__ import annotations

import os
from pathlib import Path


def parent_pids(n: int) -> list[int]:
    """The nearest `n` ancestor pids (not init): under Snakemake, the job's shell and snakemake.

    SIGKILL of `snakemake` leaves its job's shell alive, so watching only the parent would
    leave an orphaned driver running beside the rerun.
    """
    pids, pid = [], os.getpid()
    for _ in range(n):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            break
        pids.append(pid)
    return pids


def is_alive(pid: int) -> bool:
    """Whether `pid` still runs: a zombie (exited, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")
