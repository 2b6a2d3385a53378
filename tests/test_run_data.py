"""`studyflow run` on a dataset of the workflow config: it stages the data as the stage rule
would, and again once what it was read from changed, so a rerun after an edit runs on the
new data (before, the first staged table was used for good)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

OBJECTIVE = '''
def objective(trial, data):
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("rows", len(data))
    return x + float(data["y"].sum())
'''

LOADER = "import pandas as pd\n\ndef load(n):\n    return pd.DataFrame({'y': [1.0] * n})\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "obj.py").write_text(OBJECTIVE)
    (tmp_path / "prices.csv").write_text("y\n1\n2\n3\n")
    (tmp_path / "my_data.py").write_text(LOADER)
    datasets = {"prices": {"path": "prices.csv"}, "loaded": {"loader": "my_data:load", "kwargs": {"n": 3}}}
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump({"studies": [], "datasets": datasets}))
    for data in datasets:
        study = {"objective": "obj:objective", "data": data, "budget": {"n_trials": 3}}
        (tmp_path / f"{data}.yaml").write_text(yaml.safe_dump(study))
    return tmp_path


def run(project: Path, study: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", f"{study}.yaml", "--workers", "1"],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows_seen(project: Path, study: str) -> set[int]:
    return set(pd.read_parquet(project / f"results/studies/{study}/trials.parquet")["user_attrs_rows"])


def test_editing_a_data_file_then_running_again_runs_the_study_on_the_new_data(project):
    assert "staging dataset prices: not staged yet" in run(project, "prices").stderr
    assert rows_seen(project, "prices") == {3}
    staged = project / "results/data/prices.parquet"
    before = staged.stat().st_mtime_ns
    again = run(project, "prices")  # nothing changed: the staged table is used as it is
    assert "staging" not in again.stderr and staged.stat().st_mtime_ns == before

    (project / "prices.csv").write_text("y\n1\n2\n3\n4\n")
    edited = run(project, "prices")
    assert "staging dataset prices: prices.csv changed since it was staged" in edited.stderr
    assert rows_seen(project, "prices") == {4}


def test_editing_a_loader_or_its_arguments_then_running_again_stages_anew(project):
    run(project, "loaded")
    assert rows_seen(project, "loaded") == {3}

    (project / "my_data.py").write_text(LOADER.replace("[1.0] * n", "[1.0] * (n + 1)"))
    code = run(project, "loaded")
    assert "staging dataset loaded: my_data:load changed since it was staged" in code.stderr
    assert rows_seen(project, "loaded") == {4}

    config = yaml.safe_load((project / "config/config.yaml").read_text())
    config["datasets"]["loaded"]["kwargs"]["n"] = 5
    (project / "config/config.yaml").write_text(yaml.safe_dump(config))
    kwargs = run(project, "loaded")
    assert "staging dataset loaded: datasets.loaded changed since it was staged" in kwargs.stderr
    assert rows_seen(project, "loaded") == {6}


def test_data_staged_before_manifests_named_their_source_is_staged_again(project):
    """A results folder staged by an earlier version (no `source_state` in its manifest)."""
    run(project, "prices")
    manifest = project / "results/data/prices.manifest.json"
    manifest.write_text(manifest.read_text().replace('"source_state"', '"old_field"'))
    assert "prices.csv changed since it was staged" in run(project, "prices").stderr
    assert os.path.exists(manifest) and "source_state" in manifest.read_text()
