"""Only the study's owner gets in, and nothing a user writes reaches a shell unquoted.

Real clusters started by studyflow's `connect()`, real clients without the run's credentials,
real snakemake runs, real job scripts and folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_workflow import OBJECTIVE
from test_workflow import TINY_STUDY

HOSTILE = "my studies; touch PWNED"  # spaces and a shell command separator


@pytest.mark.slow
def test_a_study_dir_with_spaces_and_a_semicolon_runs_and_runs_nothing_else(tmp_path):
    import shutil

    shutil.copy(REPO / "Snakefile", tmp_path)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    (tmp_path / "config").mkdir()
    (tmp_path / HOSTILE).mkdir()
    (tmp_path / HOSTILE / "tiny.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    (tmp_path / "tiny.csv").write_text("y\n1\n2\n3\n")
    (tmp_path / "tiny_objective.py").write_text(OBJECTIVE)
    config = {"studies": ["tiny"], "study_dir": HOSTILE, "results": "my results",
              "datasets": {"tiny": {"path": "tiny.csv"}}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-c2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.rglob("PWNED"))
    assert (tmp_path / "my results" / "studies" / "tiny" / "trials.parquet").is_file()
    assert (tmp_path / "my results" / "reports" / "tiny.html").is_file()
