"""End to end: real `snakemake -c2` runs of the repo's workflow on a tiny config in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow

TINY_STUDY = {
    "objective": "tiny_objective:objective",
    "objective_args": {"column": "y"},
    "data": "tiny",
    "direction": "minimize",
    "search_space": {
        "x": {"type": "float", "low": -3, "high": 3},
        "k": {"type": "int", "low": 1, "high": 4},
    },
    "sampler": {"name": "tpe", "seed": 1},
    "budget": {"n_trials": 6},
}

OBJECTIVE = '''
def objective(trial, data, column):
    x = trial.suggest_float("x", -3, 3)
    k = trial.suggest_int("k", 1, 4)
    trial.set_user_attr("rows", len(data))
    return (x - 1) ** 2 + k + float(data[column].mean())
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow with a tiny config: one dataset (a CSV) and one 6-trial study."""
    shutil.copy(REPO / "Snakefile", tmp_path)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "config" / "studies").mkdir(parents=True)
    (tmp_path / "tiny.csv").write_text("y\n1\n2\n3\n")
    config = {"studies": ["tiny"], "datasets": {"tiny": {"path": "tiny.csv"}}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "config" / "studies" / "tiny.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    (tmp_path / "tiny_objective.py").write_text(OBJECTIVE)
    return tmp_path


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-c2", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)


def test_snakemake_runs_every_rule_then_has_nothing_to_do(workdir):
    first = snakemake(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    for out in (
        "results/data/tiny.parquet", "results/data/tiny.manifest.json",
        "results/studies/tiny/trials.parquet", "results/studies/tiny/best.json",
        "results/studies/tiny/resolved.yaml", "results/summary/studies.parquet",
        "results/summary/best_params.csv", "results/summary/artifacts.csv",
        "results/reports/tiny.html", "results/reports/index.html",
        "logs/optimize/tiny.log", "logs/stage/tiny.log",
    ):
        assert (workdir / out).is_file(), out
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert trials["number"].tolist() == list(range(6))
    assert (trials["state"] == "COMPLETE").all()
    assert (trials["user_attrs_rows"] == 3).all()
    expected = (trials["params_x"] - 1) ** 2 + trials["params_k"] + 2.0
    assert (trials["value"] - expected).abs().max() < 1e-9
    for col in ("datetime_start", "datetime_complete", "duration_s", "worker", "error"):
        assert col in trials.columns
    best = json.loads((workdir / "results/studies/tiny/best.json").read_text())
    assert best["best_values"] == [trials["value"].min()]
    manifest = json.loads((workdir / "results/data/tiny.manifest.json").read_text())
    assert manifest["rows"] == 3 and best["data_sha256"] == manifest["sha256"]
    summary = pd.read_parquet(workdir / "results/summary/studies.parquet")
    assert summary.loc[0, "study"] == "tiny" and summary.loc[0, "complete"] == 6
    html = (workdir / "results/reports/tiny.html").read_text()
    assert "Optimization history" in html and 'class="trials"' in html
    assert "<script src=" not in html  # plotly.js is inlined: the card works offline

    second = snakemake(workdir)
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr


def test_config_override_reruns_only_optimize_and_continues_the_journal(workdir):
    assert snakemake(workdir).returncode == 0
    rerun = snakemake(workdir, "--config", 'set=["budget.n_trials=9"]')
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert "rule optimize" in log and "rule stage" not in log
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert len(trials) == 9 and (trials["state"] == "COMPLETE").all()
    optimize_log = (workdir / "logs/optimize/tiny.log").read_text()
    assert "6 trials already in it" in optimize_log  # the first run's trials were not re-run


def test_an_optimize_job_on_one_worker_per_gpu_asks_for_those_gpus(workdir):
    # the gpu resource is what the SLURM executor turns into --gpus=N for the optimize job
    study = dict(TINY_STUDY, cluster={"mode": "local", "gpus": [0, 1]}, worker_resources={"GPU": 1})
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(study))
    proc = snakemake(workdir, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    optimize = proc.stdout[proc.stdout.index("rule optimize:"):].split("\n\n")[0]
    assert "gpu=2" in optimize


def test_a_bad_study_file_fails_before_any_job_with_file_and_key(workdir):
    study = dict(TINY_STUDY, search_space={"x": {"type": "float", "low": 3, "high": -3}})
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(study))
    proc = snakemake(workdir)
    assert proc.returncode != 0
    assert "config/studies/tiny.yaml: search_space.x.low: low (3) > high (-3)" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(("config", "line"), [
    ({"studys": ["tiny"]}, "config/config.yaml: studys: unknown key (did you mean 'studies'?"),
    ({"studies": ["tiny"], "datasets": {"tiny": {"paht": "tiny.csv"}}},
     "config/config.yaml: datasets.tiny.paht: unknown key (did you mean 'path'?"),
    ({"studies": "tiny x"}, "config/config.yaml: studies: 'tiny x' is not of type 'array'"),
    ({"datasets": {}}, "config/config.yaml: studies: missing (names of the studies to run)"),
], ids=["misspelt top key", "misspelt dataset key", "wrong type", "missing studies"])
def test_a_bad_workflow_config_fails_in_one_line_naming_the_key(workdir, config, line):
    """Snakemake's schema check printed "Error validating config file", the error, then the
    whole schema (about 100 lines), and never named the misspelt key."""
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(workdir)
    assert proc.returncode != 0
    assert line in proc.stderr, proc.stderr[-3000:]
    assert "Failed validating" not in proc.stderr and len(proc.stderr.splitlines()) < 30


@pytest.mark.parametrize(("objective", "missing"), [
    ("tiny_objectiv:objective", "tiny_objectiv"),
    ("tiny_pkg.modle:objective", "tiny_pkg.modle"),
], ids=["module", "package's module"])
def test_a_misspelt_objective_module_fails_the_dry_run_naming_the_file_and_key(workdir, objective, missing):
    """`snakemake -n` planned every job, and the optimize job's log said the module was
    missing only once the stage job had run."""
    (workdir / "tiny_pkg").mkdir()
    (workdir / "tiny_pkg/__init__.py").write_text("")
    (workdir / "tiny_pkg/model.py").write_text((workdir / "tiny_objective.py").read_text())
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(dict(TINY_STUDY, objective=objective)))
    proc = snakemake(workdir, "-n")
    assert proc.returncode != 0
    assert (f"config/studies/tiny.yaml: objective: no module named {missing!r} in the study file's folder, "
            "the working directory or the installed packages") in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert not (workdir / "results/data").exists()
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(dict(TINY_STUDY, objective="tiny_pkg.model:objective")))
    assert snakemake(workdir, "-n").returncode == 0  # a package's module is found


def test_a_study_file_naming_its_study_otherwise_fails_before_any_job(workdir):
    """config.yaml lists a study by its file, and the workflow's outputs are named after it;
    a `name:` of its own sent the job's outputs elsewhere: the whole study ran, then Snakemake
    failed the job for missing outputs."""
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(dict(TINY_STUDY, name="renamed")))
    proc = snakemake(workdir)
    assert proc.returncode != 0
    assert ("config/studies/tiny.yaml: name: 'renamed' is not the file's name 'tiny', by which config.yaml "
            "lists the study") in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


def test_snakemake_report_archive_holds_the_study_card(workdir):
    """`snakemake --report report.zip` as the README gives it, without --cores: a study with
    no concurrency books every core, and the report failed asking for --cores."""
    assert snakemake(workdir).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--report", "report.zip"], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(workdir / "report.zip").namelist()
    assert any(n.endswith("tiny.html") for n in names), names


def ran_jobs(proc: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """The jobs a snakemake run executed, as (rule, wildcards) from its log ('' if none)."""
    jobs, rule = set(), None
    for line in (proc.stdout + proc.stderr).splitlines():
        text = line.strip()
        if text.startswith(("rule ", "localrule ")) and text.endswith(":"):
            if rule is not None:
                jobs.add((rule, ""))
            rule = text.split()[1].rstrip(":")
        elif rule is not None and text.startswith("wildcards:"):
            jobs.add((rule, text.split(":", 1)[1].strip()))
            rule = None
        elif rule is not None and text.startswith("jobid:") is False and text == "":
            jobs.add((rule, ""))
            rule = None
    if rule is not None:
        jobs.add((rule, ""))
    return jobs


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_editing_a_data_file_restages_it_and_reruns_only_its_study(workdir):
    (workdir / "other.csv").write_text("y\n10\n20\n")
    config = {"studies": ["tiny", "other"],
              "datasets": {"tiny": {"path": "tiny.csv"}, "other": {"path": "other.csv"}}}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    (workdir / "config/studies/other.yaml").write_text(yaml.safe_dump(dict(TINY_STUDY, data="other")))
    first = snakemake(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = mtimes(workdir / "results")

    (workdir / "tiny.csv").write_text("y\n1\n2\n3\n4\n")
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = ran_jobs(rerun)
    assert ("stage", "dataset=tiny") in ran and ("optimize", "study=tiny") in ran, ran
    assert ("stage", "dataset=other") not in ran and ("optimize", "study=other") not in ran, ran
    after = mtimes(workdir / "results")
    for untouched in ("data/other.parquet", "studies/other/trials.parquet", "reports/other.html"):
        assert after[untouched] == before[untouched], untouched
    assert after["studies/tiny/trials.parquet"] > before["studies/tiny/trials.parquet"]
    manifest = json.loads((workdir / "results/data/tiny.manifest.json").read_text())
    best = json.loads((workdir / "results/studies/tiny/best.json").read_text())
    assert manifest["rows"] == 4 and best["data_sha256"] == manifest["sha256"]
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert (trials["user_attrs_rows"] == 4).all()  # the study ran again on the new data


def test_a_partitioned_parquet_folder_is_a_dataset_and_rewriting_one_part_in_place_restages_it(workdir):
    """A quant's prices as Spark or `to_parquet(partition_cols=...)` write them: a folder of
    parquet files. Rewriting one part in place leaves the folder's own mtime as it was, so the
    files inside are what decides a re-stage."""
    prices = workdir / "prices"
    pd.DataFrame({"y": [1.0, 2.0], "year": [2024, 2024]}).to_parquet(prices, partition_cols=["year"])
    pd.DataFrame({"y": [3.0], "year": [2025]}).to_parquet(prices, partition_cols=["year"])
    config = {"studies": ["tiny"], "datasets": {"tiny": {"path": "prices"}}}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    first = snakemake(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(pd.read_parquet(workdir / "results/data/tiny.parquet")["y"]) == [1.0, 2.0, 3.0]
    assert ran_jobs(snakemake(workdir)) == set()  # nothing to do

    part = next((prices / "year=2025").iterdir())
    folder_mtime = prices.stat().st_mtime_ns
    pd.DataFrame({"y": [3.0, 4.0]}).to_parquet(part, index=False)  # the same file, rewritten
    assert prices.stat().st_mtime_ns == folder_mtime
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = ran_jobs(rerun)
    assert ("stage", "dataset=tiny") in ran and ("optimize", "study=tiny") in ran, ran
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert (trials["user_attrs_rows"] == 4).all()  # the study ran again on the new data


def test_a_loader_named_as_a_class_method_stages_under_snakemake(workdir):
    """`module:Class.method` names a loader as it names a sampler; the config schema took
    only `module:function`, so Snakemake refused the config before `studyflow stage` ran."""
    (workdir / "my_data.py").write_text("import pandas as pd\n\nclass Prices:\n    @staticmethod\n"
                                        "    def load(n):\n        return pd.DataFrame({'y': [1.0] * n})\n")
    config = {"studies": ["tiny"], "datasets": {"tiny": {"loader": "my_data:Prices.load", "kwargs": {"n": 5}}}}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(workdir, "--until", "stage")
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(pd.read_parquet(workdir / "results/data/tiny.parquet")) == 5


def test_editing_a_datasets_loader_restages_it_and_reruns_its_study(workdir):
    loader = "import pandas as pd\n\ndef load(n):\n    return pd.DataFrame({'y': [float(n)] * n})\n"
    (workdir / "tiny_loader.py").write_text(loader)
    config = {"studies": ["tiny"], "datasets": {"tiny": {"loader": "tiny_loader:load", "kwargs": {"n": 3}}}}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    first = snakemake(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert ran_jobs(snakemake(workdir)) == set()  # nothing to do

    (workdir / "tiny_loader.py").write_text(loader.replace("[float(n)]", "[float(n) + 1]"))
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = ran_jobs(rerun)
    assert ("stage", "dataset=tiny") in ran and ("optimize", "study=tiny") in ran, ran
    staged = pd.read_parquet(workdir / "results/data/tiny.parquet")
    assert staged["y"].tolist() == [4.0, 4.0, 4.0]


def test_editing_a_datasets_entry_in_the_config_restages_it_and_reruns_its_study(workdir):
    """A loader's `kwargs`, or a `path` to another file (older than the staged table), edited
    in config/config.yaml: nothing ran, and the studies went on with the old data, saying
    nothing. A path to a file that does not exist ran nothing either."""
    loader = "import pandas as pd\n\ndef load(n):\n    return pd.DataFrame({'y': [float(n)] * n})\n"
    (workdir / "tiny_loader.py").write_text(loader)
    config = {"studies": ["tiny"], "datasets": {"tiny": {"loader": "tiny_loader:load", "kwargs": {"n": 3}}}}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    (workdir / "old.csv").write_text("y\n7\n7\n")  # older than anything staged below
    first = snakemake(workdir)
    assert first.returncode == 0, first.stderr[-3000:]

    config["datasets"]["tiny"]["kwargs"] = {"n": 5}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {("stage", "dataset=tiny"), ("optimize", "study=tiny")} <= ran_jobs(rerun)
    assert pd.read_parquet(workdir / "results/data/tiny.parquet")["y"].tolist() == [5.0] * 5

    config["datasets"]["tiny"] = {"path": "old.csv"}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {("stage", "dataset=tiny"), ("optimize", "study=tiny")} <= ran_jobs(rerun)
    assert pd.read_parquet(workdir / "results/data/tiny.parquet")["y"].tolist() == [7, 7]
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert (trials["user_attrs_rows"] == 2).all()  # the study ran again on the new data
    assert ran_jobs(snakemake(workdir)) == set()  # and then has nothing to do

    config["datasets"]["tiny"] = {"path": "missing.csv"}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    missing = snakemake(workdir)
    assert missing.returncode != 0 and "missing.csv" in missing.stderr


def test_editing_the_users_own_sampler_reruns_its_study_with_it(workdir):
    # a scientist's method under development: the study file names their sampler class
    sampler = ("import optuna\n\nclass Fixed(optuna.samplers.RandomSampler):\n"
               "    def sample_independent(self, study, trial, name, distribution):\n"
               "        return distribution.low if name == 'k' else 0.5\n")
    (workdir / "my_sampler.py").write_text(sampler)
    study = dict(TINY_STUDY, sampler={"name": "my_sampler:Fixed", "seed": 1})
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(study))
    first = snakemake(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert set(trials["params_x"]) == {0.5}
    assert ran_jobs(snakemake(workdir)) == set()  # nothing to do

    (workdir / "my_sampler.py").write_text(sampler.replace("else 0.5", "else -0.5"))
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = ran_jobs(rerun)
    assert ("optimize", "study=tiny") in ran and ("stage", "dataset=tiny") not in ran, ran
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert set(trials["params_x"]) == {-0.5} and len(trials) == 6  # a new journal: the edited sampler's trials


def test_a_url_dataset_without_its_storage_plugin_is_refused_at_load(workdir):
    config = {"studies": ["tiny"], "datasets": {"tiny": {"path": "s3://bucket/tiny.csv"}}}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(workdir, "-n")
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if "snakemake-storage-plugin-s3" in line]
    assert lines, proc.stdout + proc.stderr
    assert "datasets.tiny.path" in lines[0] and "config/config.yaml" in lines[0], lines[0]
    assert not (workdir / "results").exists()


def _edit_study(workdir: Path, edit) -> None:
    path = workdir / "config/studies/tiny.yaml"
    path.write_text(edit(path.read_text()))


def test_a_report_title_edit_rerenders_the_card_without_rerunning_the_study(workdir):
    assert snakemake(workdir).returncode == 0
    trials_before = (workdir / "results/studies/tiny/trials.parquet").stat().st_mtime_ns
    _edit_study(workdir, lambda text: text + "report: {title: Tiny study card}\n")
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = {rule for rule, _ in ran_jobs(rerun)}
    assert "report" in ran and not ran & {"optimize", "stage", "summarize"}, ran
    assert (workdir / "results/studies/tiny/trials.parquet").stat().st_mtime_ns == trials_before
    assert "Tiny study card" in (workdir / "results/reports/tiny.html").read_text()


def test_naming_the_metric_reruns_optimize_to_rename_the_outputs_without_running_a_trial(workdir):
    assert snakemake(workdir).returncode == 0
    _edit_study(workdir, lambda text: text + "metric_names: [score]\n")
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = {rule for rule, _ in ran_jobs(rerun)}
    assert {"optimize", "report"} <= ran and "stage" not in ran, ran
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert "value_score" in trials.columns and "value" not in trials.columns
    assert "6 trials already in it" in (workdir / "logs/optimize/tiny.log").read_text()
    assert len(trials) == 6  # none ran anew


def test_a_comment_in_a_study_file_leaves_nothing_to_do(workdir):
    assert snakemake(workdir).returncode == 0
    _edit_study(workdir, lambda text: "# tuned by hand\n" + text + "# end\n")
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Nothing to be done" in rerun.stdout + rerun.stderr, ran_jobs(rerun)


def test_a_search_space_edit_reruns_optimize(workdir):
    assert snakemake(workdir).returncode == 0
    study = dict(TINY_STUDY, search_space={**TINY_STUDY["search_space"],
                                           "x": {"type": "float", "low": -2, "high": 2}})
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(study))
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = {rule for rule, _ in ran_jobs(rerun)}
    assert {"optimize", "report", "summarize"} <= ran and "stage" not in ran, ran
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert trials["params_x"].between(-2, 2).all()


def test_editing_the_objectives_code_reruns_optimize_with_the_new_code(workdir):
    assert snakemake(workdir).returncode == 0
    (workdir / "tiny_objective.py").write_text(OBJECTIVE.replace("+ k +", "+ 100 * k +"))
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = {rule for rule, _ in ran_jobs(rerun)}
    assert "optimize" in ran and "stage" not in ran, ran
    trials = pd.read_parquet(workdir / "results/studies/tiny/trials.parquet")
    assert (trials["value"] >= 100).all()  # every trial ran the edited objective: none from the store
    again = snakemake(workdir)
    assert "Nothing to be done" in again.stdout + again.stderr, ran_jobs(again)


def test_a_study_with_trial_threads_books_them_and_starts_one_worker_per_trial(workdir):
    study = dict(TINY_STUDY, concurrency=2, cluster={"trial_threads": 2})
    (workdir / "config/studies/tiny.yaml").write_text(yaml.safe_dump(study))
    dry = snakemake(workdir, "-n", "-p", "--forceall", "-c4")
    assert dry.returncode == 0, dry.stderr[-3000:]
    text = dry.stdout + dry.stderr
    job = text[text.index("rule optimize:"):].split("\n\n")[0]
    assert "threads: 4" in job  # 2 trials at once of 2 threads each: the job books 4 cores ...
    assert "studyflow optimize" in job and "--workers 2 " in job, job  # ... and starts 2 workers


def test_what_the_objective_prints_goes_to_its_studys_log_every_line(workdir):
    # a Snakemake rule's output belongs in its log: not interleaved with other jobs on the console
    noisy = OBJECTIVE.replace('    return (x - 1)', '    print(f"trial {trial.number} says x={x}")\n    return (x - 1)')
    (workdir / "tiny_objective.py").write_text(noisy)
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (workdir / "logs/optimize/tiny.log").read_text()
    assert sorted(line.split()[1] for line in log.splitlines() if " says x=" in line) == sorted(map(str, range(6)))
    assert " says x=" not in proc.stdout + proc.stderr


def test_a_running_trials_printed_lines_reach_the_log_as_they_are_printed(tmp_path):
    # `tail -f` on a long trial's log shows its progress now, not when the trial ends
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"objective": "sf_objectives:prints_then_waits_for_go",
                                                     "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
                                                     "budget": {"n_trials": 1}}))
    log = tmp_path / "run.log"
    with log.open("w") as out:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a user's shell has none
        proc = subprocess.Popen([sys.executable, "-m", "studyflow.cli", "run", "s.yaml", "--workers", "1"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while "trial 0 started" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            seen = "trial 0 started" in log.read_text()
            (tmp_path / "go").write_text("")
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            proc.kill()
    assert seen, log.read_text()[-3000:]
    trials = pd.read_parquet(tmp_path / "results/studies/s/trials.parquet")
    assert trials["state"].tolist() == ["COMPLETE"]
