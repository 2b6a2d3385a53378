"""Bad input gets one clear line naming the file and key, and leaves no output behind."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from studyflow import ConfigError
from studyflow import DataError
from studyflow import optimize

SPACE = {"w": {"type": "float", "low": 0, "high": 1}}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "studyflow.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_missing_data_file_is_one_line_naming_the_key(tmp_path):
    proc = run_cli("stage", "prices", "--spec", '{"path": "nowhere/prices.csv"}', "--out", "results/data", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "studyflow: error: datasets.prices.path: data file nowhere/prices.csv not found"
    assert not (tmp_path / "results").exists()


def test_unreadable_data_file(tmp_path):
    (tmp_path / "prices.parquet").write_bytes(b"not parquet at all")
    proc = run_cli("stage", "prices", "--spec", '{"path": "prices.parquet"}', "--out", "results/data", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "datasets.prices.path: cannot read prices.parquet" in proc.stderr
    assert not (tmp_path / "results/data/prices.parquet").exists()


def test_a_ragged_csv_is_one_line_naming_the_key(tmp_path):
    """pandas ends its parser's message with a newline: the error ended in an empty line."""
    (tmp_path / "prices.csv").write_text("a,b\n1,2\n3,4,5\n")
    proc = run_cli("stage", "prices", "--spec", '{"path": "prices.csv"}', "--out", "results/data", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, repr(proc.stderr)
    assert proc.stderr.startswith("studyflow: error: datasets.prices.path: cannot read prices.csv: ParserError")


def test_a_scikit_learn_loader_without_as_frame_says_to_set_it(tmp_path):
    """Its Bunch holds arrays and `frame: None`: the error said "returned NoneType"."""
    proc = run_cli("stage", "wine", "--spec", '{"loader": "sklearn.datasets:load_wine"}', "--out", "results/data",
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == ("studyflow: error: datasets.wine.loader: sklearn.datasets:load_wine returned a Bunch "
                           "without a table (its frame is None): set kwargs: {as_frame: true}\n"), proc.stderr


def test_a_loader_is_named_as_samplers_are_and_a_misspelt_one_says_what_is_missing(tmp_path):
    (tmp_path / "my_data.py").write_text(
        "import pandas as pd\n\nclass Prices:\n    @staticmethod\n    def load(n):\n"
        "        return pd.DataFrame({'p': [1.0] * n})\n")
    ok = run_cli("stage", "prices", "--spec", '{"loader": "my_data:Prices.load", "kwargs": {"n": 3}}',
                 "--out", "results/data", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert len(pd.read_parquet(tmp_path / "results/data/prices.parquet")) == 3
    for loader, says in [("my_data:Prices.lod", "module 'my_data' has no 'Prices.lod'"),
                         ("my_dta:load", "cannot import module 'my_dta': ModuleNotFoundError: No module named 'my_dta'")]:
        bad = run_cli("stage", "other", "--spec", f'{{"loader": "{loader}"}}', "--out", "results/data", cwd=tmp_path)
        assert bad.returncode == 1
        assert bad.stderr == f"studyflow: error: datasets.other.loader: {says}\n"
    assert not (tmp_path / "results/data/other.parquet").exists()


def test_data_given_to_the_api_that_is_missing_or_not_parquet(tmp_path):
    study = {"objective": "sf_objectives:with_data", "search_space": SPACE}
    with pytest.raises(DataError, match="missing.parquet: data file not found"):
        optimize(None, study, data=tmp_path / "missing.parquet", results_dir=tmp_path / "results")
    (tmp_path / "bad.parquet").write_text("garbage")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet file"):
        optimize(None, study, data=tmp_path / "bad.parquet", results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_staged_table_missing_a_column_the_objective_needs(write_study, tmp_path):
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(tmp_path / "table.parquet")
    path = write_study(objective="sf_objectives:with_data", objective_args={"column": "y"},
                       data_columns=["y"], search_space=SPACE)
    with pytest.raises(ConfigError) as info:
        optimize(None, path, data=tmp_path / "table.parquet", results_dir=tmp_path / "results")
    message = str(info.value)
    assert message.startswith(f"{path}: data_columns: ") and "lacks column(s) ['y']" in message
    assert "\n" not in message
    assert not (tmp_path / "results").exists()


def test_dataset_not_defined_in_the_workflow_config(write_study, tmp_path):
    path = write_study(objective="sf_objectives:with_data", data="prices", search_space=SPACE)
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"{path}: data: dataset 'prices' is not defined under 'datasets'" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only as the file system does it (root ignores a mode): a read-only bind mount."""
    import os
    import shutil

    made = []

    def make(folder):
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            return
        if shutil.which("mount") is None or subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode:
            pytest.skip("no bind mount here")
        made.append(folder)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)

    yield make
    for folder in made:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_results_folder_is_one_line_naming_the_file(tmp_path, read_only):
    """`studyflow run` and `store gc` on a results folder that cannot be written printed a
    20-line traceback (OSError opening the study's lock file)."""
    study = {"objective": "sf_objectives:instant", "search_space": {"x": SPACE["w"]}, "budget": {"n_trials": 3}}
    (tmp_path / "study.yaml").write_text(__import__("json").dumps(study))
    assert run_cli("run", "study.yaml", "--workers", "1", cwd=tmp_path).returncode == 0
    read_only(tmp_path / "results")
    for args in (("run", "study.yaml", "--workers", "1"), ("store", "gc")):
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("studyflow: error:")]
        assert f"{tmp_path / 'results'}" in line or "results/.store" in line, line
        assert "Read-only file system" in line or "Permission denied" in line, line
