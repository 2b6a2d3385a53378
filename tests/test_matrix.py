"""The study matrix: `matrix:` in the workflow config expands problems x methods into studies
named <problem>-<method>, with a per-problem reference rule and a comparison table and page.
Real `snakemake -c2` runs of the repo's workflow on a tiny 2 x 2 matrix in a temp dir."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from test_workflow import ran_jobs

pytestmark = pytest.mark.slow

OBJECTIVE = '''
def objective(trial, data, column, scale, reference):
    x = trial.suggest_float("x", -3, 3)
    trial.set_user_attr("rows", len(data))
    trial.set_user_attr("ref_mean", reference["mean"])
    return scale * (x - 1) ** 2 + reference["mean"]
'''

# The reference loader: the mean of a column of the problem's staged data; each call leaves a
# line in calls.txt (in the working directory), so the test can count them.
REFERENCE = '''
def mean_of(data, column):
    with open("calls.txt", "a") as f:
        f.write(f"{len(data)}\\n")
    return {"mean": float(data[column].mean())}
'''

BASE_STUDY = {  # a method's base study file: the objective and search space every method shares
    "objective": "matrix_objective:objective",
    "objective_args": {"column": "y"},
    "direction": "minimize",
    "search_space": {"x": {"type": "float", "low": -3, "high": 3}},
}

MATRIX = {
    "problems": {
        "small": {"data": "small", "objective_args": {"scale": 1},
                  "reference": {"loader": "matrix_reference:mean_of", "kwargs": {"column": "y"}}},
        "large": {"data": "large", "objective_args": {"scale": 2}, "set": ["budget.retries=2"],
                  "reference": {"loader": "matrix_reference:mean_of", "kwargs": {"column": "y"}}},
    },
    "methods": {
        "rand": {"study": "base", "sampler": {"name": "random", "seed": 3}, "budget": {"n_trials": 4}},
        "tpe": {"study": "base", "sampler": {"name": "tpe", "seed": 1}, "budget": {"n_trials": 5},
                "search_space": {"x": {"type": "float", "low": 0, "high": 2}}},
    },
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow whose config is a 2 x 2 matrix (two CSV datasets, two methods)."""
    shutil.copy(REPO / "Snakefile", tmp_path)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    (tmp_path / "config" / "studies").mkdir(parents=True)
    (tmp_path / "small.csv").write_text("y\n1\n2\n3\n")
    (tmp_path / "large.csv").write_text("y\n10\n20\n30\n40\n")
    config = {"studies": [], "datasets": {"small": {"path": "small.csv"}, "large": {"path": "large.csv"}},
              "matrix": MATRIX}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "config" / "studies" / "base.yaml").write_text(yaml.safe_dump(BASE_STUDY))
    (tmp_path / "matrix_objective.py").write_text(OBJECTIVE)
    (tmp_path / "matrix_reference.py").write_text(REFERENCE)
    return tmp_path


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-c2", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)


STUDIES = ("small-rand", "small-tpe", "large-rand", "large-tpe")


def test_a_dry_run_lists_the_expanded_studies(workdir):
    proc = snakemake(workdir, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = ran_jobs(proc)
    assert {w for rule, w in jobs if rule == "optimize"} == {f"study={s}" for s in STUDIES}, jobs
    assert {w for rule, w in jobs if rule == "matrix_reference"} == {"problem=small", "problem=large"}


def test_the_matrix_runs_each_pair_with_its_method_and_problem_and_compares_them(workdir):
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = ran_jobs(proc)
    # the reference ran once per problem, not once per study
    assert sorted(w for rule, w in jobs if rule == "matrix_reference") == ["problem=large", "problem=small"]
    assert sorted((workdir / "calls.txt").read_text().split()) == ["3", "4"]
    means = {"small": 2.0, "large": 25.0}
    rows = {"small": 3, "large": 4}
    for problem in ("small", "large"):
        ref = workdir / f"results/matrix/references/{problem}.json"
        assert json.loads(ref.read_text()) == {"mean": means[problem]}
        for method, n, sampler, low in (("rand", 4, "random", -3), ("tpe", 5, "tpe", 0)):
            study = workdir / f"results/studies/{problem}-{method}"
            trials = pd.read_parquet(study / "trials.parquet")
            assert len(trials) == n and (trials["state"] == "COMPLETE").all()
            assert (trials["user_attrs_rows"] == rows[problem]).all()  # the problem's data
            assert (trials["user_attrs_ref_mean"] == means[problem]).all()  # its reference reached it
            scale = 1 if problem == "small" else 2
            assert ((trials["value"] - (scale * (trials["params_x"] - 1) ** 2 + means[problem])).abs() < 1e-9).all()
            assert trials["params_x"].min() >= low  # the method's search space
            resolved = yaml.safe_load((study / "resolved.yaml").read_text())
            assert resolved["sampler"]["name"] == sampler and resolved["name"] == f"{problem}-{method}"
            assert resolved["budget"]["retries"] == (2 if problem == "large" else 1)  # the problem's set
            # the reference was written before any of the problem's trials started
            started = trials["datetime_start"].min().timestamp()
            assert ref.stat().st_mtime <= started + 1.0

    matrix = pd.read_parquet(workdir / "results/summary/matrix.parquet")
    assert len(matrix) == 4
    assert set(zip(matrix["problem"], matrix["method"])) == {
        (s.split("-")[0], s.split("-")[1]) for s in STUDIES}
    for row in matrix.to_dict("records"):
        study = workdir / f"results/studies/{row['study']}"
        trials = pd.read_parquet(study / "trials.parquet")
        best = json.loads((study / "best.json").read_text())
        assert row["best_value"] == pytest.approx(trials["value"].min())
        assert row["n_trials"] == len(trials) and row["failed"] == 0
        assert row["wall_time_s"] == pytest.approx(best["wall_time_s"])
    page = (workdir / "results/reports/matrix.html").read_text()
    assert "heatmap" in page and all(s in page for s in STUDIES)
    index = (workdir / "results/reports/index.html").read_text()
    assert 'href="matrix.html"' in index

    again = snakemake(workdir)
    assert "Nothing to be done" in again.stdout + again.stderr, ran_jobs(again)

    # editing the reference loader's code runs the references again, then the problems' studies
    (workdir / "matrix_reference.py").write_text(REFERENCE.replace("calls.txt", "calls_after_edit.txt"))
    edited = snakemake(workdir, "-n")
    jobs = ran_jobs(edited)
    assert {w for rule, w in jobs if rule == "matrix_reference"} == {"problem=small", "problem=large"}, jobs
    assert {w for rule, w in jobs if rule == "optimize"} == {f"study={s}" for s in STUDIES}, jobs


def _write_matrix(workdir: Path, matrix: dict) -> None:
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["matrix"] = matrix
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m["methods"]["tpe"].update(sampler={"nmae": "tpe"}),
     "matrix.methods.tpe.sampler.nmae: unknown key"),
    (lambda m: m["methods"]["tpe"].update(colour="red"),
     "matrix.methods.tpe.colour: unknown key"),
    (lambda m: m["problems"]["small"].pop("data"),
     "matrix.problems.small.data: missing (required)"),
    (lambda m: m["problems"]["small"].update(data="nowhere"),
     "matrix.problems.small.data: dataset 'nowhere' is not defined under 'datasets'"),
    (lambda m: m["methods"]["rand"].update(study="missing"),
     "matrix.methods.rand.study: no study file config/studies/missing.yaml"),
])
def test_an_invalid_matrix_fails_at_load_in_one_line_naming_the_key(workdir, edit, expected):
    matrix = json.loads(json.dumps(MATRIX))
    edit(matrix)
    _write_matrix(workdir, matrix)
    proc = snakemake(workdir, "-n")
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if expected in line and line.strip().startswith("config/config.yaml")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not (workdir / "results/studies").exists()


def test_a_matrix_in_its_own_configfile_names_that_file_in_its_one_line_error(workdir):
    """As the README runs the example: `--configfile config/matrix.yaml`. The error named
    "config/config.yaml (with --config)" and was followed by studyflow's stack frames."""
    matrix = json.loads(json.dumps(MATRIX))
    matrix["methods"]["tpe"]["samplr"] = matrix["methods"]["tpe"].pop("sampler")
    (workdir / "config/matrix.yaml").write_text(yaml.safe_dump({"matrix": matrix}))
    proc = snakemake(workdir, "-n", "--configfile", "config/matrix.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config/config.yaml + config/matrix.yaml: matrix.methods.tpe.samplr: unknown key" in out, out[-3000:]
    assert "with --config" not in out and "studyflow/config" not in out, out[-3000:]


def test_the_expanded_studies_carry_their_method_s_worker_resources(workdir):
    """`worker_resources` (a method's pool) reach the expanded study; a local run has no such
    pool, so this checks the resolved study as the optimize job reads it."""
    from studyflow.config import WorkflowConfig

    matrix = json.loads(json.dumps(MATRIX))
    matrix["methods"]["tpe"]["worker_resources"] = {"pool_b": 1}
    raw = yaml.safe_load((workdir / "config/config.yaml").read_text())
    raw["matrix"] = matrix
    raw["study_dir"] = str(workdir / "config/studies")
    studies = WorkflowConfig.from_dict(raw).load_all()
    assert sorted(studies) == sorted(STUDIES)
    assert studies["large-tpe"].worker_resources == {"pool_b": 1}
    assert studies["large-rand"].worker_resources == {}
    assert studies["large-tpe"].objective_args == {"column": "y", "scale": 2}


MY_METHOD = '''
import optuna

class Midpoint(optuna.samplers.RandomSampler):
    """A scientist's method under development: every parameter at `at` of its range."""

    def __init__(self, at=0.5, seed=None):
        super().__init__(seed=seed)
        self.at = at

    def sample_independent(self, study, trial, name, distribution):
        return distribution.low + self.at * (distribution.high - distribution.low)
'''


def test_a_method_of_the_users_own_sampler_runs_on_every_problem_and_an_edit_reruns_only_it(workdir):
    (workdir / "my_methods.py").write_text(MY_METHOD)
    matrix = {**MATRIX, "methods": {**MATRIX["methods"], "mine": {
        "study": "base", "sampler": {"name": "my_methods:Midpoint", "options": {"at": 0.25}}, "budget": {"n_trials": 3}}}}
    _write_matrix(workdir, matrix)
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for problem in ("small", "large"):
        trials = pd.read_parquet(workdir / f"results/studies/{problem}-mine/trials.parquet")
        assert trials["params_x"].tolist() == [-1.5] * 3  # a quarter of [-3, 3]: its proposals
    methods = set(pd.read_parquet(workdir / "results/summary/matrix.parquet")["method"])
    assert methods == {"rand", "tpe", "mine"}

    (workdir / "my_methods.py").write_text(MY_METHOD.replace("self.at * ", "0.5 * self.at * "))
    jobs = ran_jobs(snakemake(workdir, "-n"))
    assert {w for rule, w in jobs if rule == "optimize"} == {"study=small-mine", "study=large-mine"}, jobs


def test_a_reference_loader_named_as_a_class_method_is_accepted_as_objectives_and_datasets_loaders_are(workdir):
    from studyflow.config import WorkflowConfig

    matrix = json.loads(json.dumps(MATRIX))
    matrix["problems"]["small"]["reference"]["loader"] = "matrix_reference:References.mean_of"
    raw = yaml.safe_load((workdir / "config/config.yaml").read_text())
    raw["matrix"], raw["study_dir"] = matrix, str(workdir / "config/studies")
    workflow = WorkflowConfig.from_dict(raw)
    assert workflow.matrix.problems["small"].reference.loader == "matrix_reference:References.mean_of"


def test_editing_a_references_kwargs_reruns_that_reference(workdir):
    """A reference's `kwargs` edited in the config re-run it (its spec is a param Snakemake
    records); a dataset's entry did not re-stage it until its spec became the stage rule's input."""
    (workdir / "small.csv").write_text("y,z\n1,10\n2,20\n3,30\n")
    first = snakemake(workdir, "--until", "matrix_reference")
    assert first.returncode == 0, first.stderr[-3000:]
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["matrix"]["problems"]["small"]["reference"]["kwargs"] = {"column": "z"}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    rerun = snakemake(workdir, "--until", "matrix_reference")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert ran_jobs(rerun) == {("matrix_reference", "problem=small")}
    assert json.loads((workdir / "results/matrix/references/small.json").read_text())["mean"] == 20.0
