"""studyflow as a Snakemake module: another workflow `module studyflow:`s our Snakefile with its
own config (prefixes, study folder, a dataset its own rule writes) and builds everything."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from test_workflow import OBJECTIVE
from test_workflow import TINY_STUDY
from test_workflow import ran_jobs

pytestmark = pytest.mark.slow

OUTER_SNAKEFILE = f'''
configfile: "config.yaml"


rule make_data:
    output:
        "raw/tiny.csv",
    log:
        "outer_logs/make_data.log",
    shell:
        "printf 'y\\\\n1\\\\n2\\\\n3\\\\n' > {{output}} 2> {{log}}"


module studyflow:
    snakefile:
        "{REPO / "Snakefile"}"
    config:
        config["studyflow"]


use rule * from studyflow as studyflow_*


rule all:
    input:
        rules.studyflow_all.input,
    default_target: True
'''

OUTER_CONFIG = {
    "studyflow": {
        "results": "out/studyflow",
        "logs": "out/logs",
        "study_dir": "studies",
        "studies": ["tiny"],
        "datasets": {"tiny": {"path": "raw/tiny.csv"}},
    }
}


@pytest.fixture
def outer(tmp_path: Path) -> Path:
    """Someone else's workflow: its own data rule, our Snakefile as a module, its own layout."""
    (tmp_path / "Snakefile").write_text(OUTER_SNAKEFILE)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(OUTER_CONFIG))
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    (tmp_path / "tiny_objective.py").write_text(OBJECTIVE)
    return tmp_path


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-c2", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)


def test_another_workflow_uses_studyflow_as_a_module(outer):
    proc = snakemake(outer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = {rule for rule, _ in ran_jobs(proc)}
    assert {"make_data", "studyflow_stage", "studyflow_optimize", "studyflow_report",
            "studyflow_summarize"} <= ran, ran
    for out in ("data/tiny.parquet", "studies/tiny/trials.parquet", "studies/tiny/best.json",
                "summary/studies.parquet", "reports/tiny.html", "reports/index.html"):
        assert (outer / "out/studyflow" / out).is_file(), out
    for log in ("stage/tiny.log", "optimize/tiny.log", "report/tiny.log", "summarize.log"):
        assert (outer / "out/logs" / log).is_file(), log
    assert not (outer / "results").exists() and not (outer / "logs").exists()
    trials = pd.read_parquet(outer / "out/studyflow/studies/tiny/trials.parquet")
    assert len(trials) == 6 and (trials["user_attrs_rows"] == 3).all()

    again = snakemake(outer)
    assert "Nothing to be done" in again.stdout + again.stderr, ran_jobs(again)
    (outer / "raw/tiny.csv").write_text("y\n1\n2\n3\n4\n")  # the data is an input of the stage rule
    rerun = snakemake(outer)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {"studyflow_stage", "studyflow_optimize"} <= {rule for rule, _ in ran_jobs(rerun)}

    report = snakemake(outer, "--report", "report.zip")
    assert report.returncode == 0, report.stderr[-3000:]
    names = zipfile.ZipFile(outer / "report.zip").namelist()
    assert any(n.endswith("tiny.html") for n in names), names
