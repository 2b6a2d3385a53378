"""A git worktree of this repository at another commit, for a benchmark's rows at `--before`."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def add_worktree(ref: str, where: Path) -> Path:
    """Check out `ref` at `where` (detached); returns its `src`, for PYTHONPATH."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)
    return where / "src"


def remove_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)], check=False)
