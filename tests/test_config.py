"""A bad study file fails before any cluster starts, with one line naming the file and key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from studyflow import ConfigError
from studyflow import ObjectiveError
from studyflow import load_study
from studyflow import optimize

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def _error(path, overrides=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_study(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message
    return info.value


def test_unknown_key_names_file_and_key(write_study):
    path = write_study(objective="m:f", search_space={"x": {"type": "float", "low": 0, "hihg": 1}})
    err = _error(path)
    assert err.key == "search_space.x.hihg"
    assert "unknown key" in str(err)


def test_unknown_top_level_key(write_study):
    err = _error(write_study(objective="m:f", n_trials=5))
    assert err.key == "n_trials"


def test_wrong_type_names_the_key(write_study):
    err = _error(write_study(objective="m:f", budget={"n_trials": "many"}))
    assert err.key == "budget.n_trials"
    assert "wrong type" in str(err)


def test_n_trials_is_at_least_1_or_null_for_no_limit(write_study):
    err = _error(write_study(objective="m:f", budget={"n_trials": 0}))
    assert err.key == "budget.n_trials"
    unlimited = load_study(write_study(objective="m:f", budget={"n_trials": None, "timeout_s": 60}))
    assert unlimited.budget.n_trials is None  # as optimize(timeout=60): the time is the budget


def test_low_above_high(write_study):
    err = _error(write_study(objective="m:f", search_space={"x": {"type": "int", "low": 5, "high": 1}}))
    assert err.key == "search_space.x.low"
    assert "low (5) > high (1)" in str(err)


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("direction", "sideways", "direction"),
        ("sampler", {"name": "magic"}, "sampler.name"),
        ("search_space", {"c": {"type": "categorical", "choices": []}}, "search_space.c.choices"),
        ("search_space", {"c": {"type": "categorical", "choices": [1, [2, 3]]}}, "search_space.c.choices"),
        ("search_space", {"x": {"type": "float", "low": 0, "high": 1, "log": True}}, "search_space.x.low"),
        ("search_space", {"n": {"type": "int", "low": 1, "high": 100, "log": True, "step": 2}}, "search_space.n.step"),
        ("search_space", {"n": {"type": "int", "low": 0, "high": 10, "step": 20}}, "search_space.n.step"),
        ("objective", "no_colon", "objective"),
        ("name", "../escape", "name"),
        ("data", "../../etc", "data"),
        ("metric_names", ["a", "b"], "metric_names"),  # two names, one objective
        ("metric_names", [""], "metric_names"),
    ],
)
def test_invalid_values(write_study, field, value, key):
    fields = {"objective": "m:f", "search_space": SPACE, field: value}
    assert _error(write_study(**fields)).key == key


def test_a_study_named_after_a_file_name_no_file_may_carry_says_to_rename_it_or_set_name(tmp_path):
    path = tmp_path / "my study.yaml"
    path.write_text("objective: m:f\n")
    err = _error(path)
    assert err.key == "name" and "named after its file" in err.message and "set `name:`" in err.message
    path.write_text("objective: m:f\nname: my_study\n")
    assert load_study(path).name == "my_study"


def test_a_direction_beside_directions_is_refused_as_optunas_create_study_refuses_it(write_study):
    """`direction: maximize` next to `directions:` would be silently ignored (directions win)."""
    err = _error(write_study(objective="m:f", search_space=SPACE, direction="maximize",
                             directions=["minimize", "minimize"]))
    assert err.key == "direction" and "only one of" in err.message
    # as resolved.yaml writes a multi-objective study: the default direction beside its directions
    assert load_study(write_study(objective="m:f", search_space=SPACE, direction="minimize",
                                  directions=["maximize", "minimize"])).study_directions == ["maximize", "minimize"]


def test_a_pruner_on_a_study_of_several_objectives_is_refused_before_any_trial_runs(write_study):
    """Optuna's `Trial.report` and `should_prune` raise NotImplementedError for several
    objectives: such a study ran until its first 10 trials had all failed on it."""
    err = _error(write_study(objective="m:f", search_space=SPACE, directions=["minimize", "maximize"],
                             pruner={"name": "median"}))
    assert err.key == "pruner.name" and "several objectives" in err.message, err.message


@pytest.mark.parametrize(("search_space", "key"), [
    ({}, "search_space"),  # define-by-run: the grid has no points to run (it ran none, and said done)
    ({"x": {"type": "float", "low": 0, "high": 1}}, "search_space.x.step"),
])
def test_a_grid_search_refuses_a_space_it_cannot_enumerate(write_study, search_space, key):
    fields = {"objective": "m:f", "search_space": search_space, "sampler": {"name": "grid"}}
    assert _error(write_study(**fields)).key == key


def test_overrides_merge_as_dot_list(write_study):
    path = write_study(objective="m:f", search_space=SPACE, budget={"n_trials": 5, "retries": 2})
    cfg = load_study(path, ["budget.n_trials=50", "sampler.seed=7", "search_space.x.high=3"])
    assert cfg.budget.n_trials == 50
    assert cfg.budget.retries == 2  # untouched keys keep the file's value
    assert cfg.sampler.seed == 7
    assert cfg.search_space["x"].high == 3
    assert cfg.name == "study"


def test_bad_override_names_the_key(write_study):
    path = write_study(objective="m:f", search_space=SPACE)
    err = _error(path, ["budget.n_trails=50"])
    assert err.key == "budget.n_trails"
    assert "--set" in str(err)


def test_unimportable_objective_fails_before_any_cluster(write_study, tmp_path):
    path = write_study(objective="no_such_module_xyz:objective", search_space=SPACE)
    with pytest.raises(ObjectiveError) as info:
        optimize(None, path, results_dir=tmp_path / "results")
    assert "no_such_module_xyz" in str(info.value) and str(path) in str(info.value)
    assert info.value.key == "objective"
    assert not (tmp_path / "results").exists()  # no lock, no journal: nothing started


def test_objective_args_reach_an_objective_that_takes_no_data_and_are_never_dropped(write_study, tmp_path):
    """`objective(trial, scale=1.0)` with `objective_args: {scale: 10}` and no data: studyflow
    called it as objective(trial, data, scale=10) and refused ("multiple values for 'scale'"),
    and an `objective(trial)` silently ran without the study file's objective_args."""
    study = {"objective": "sf_objectives:scaled", "objective_args": {"scale": 10.0}, "sampler": {"name": "random"},
             "budget": {"n_trials": 4}}
    trials = optimize(None, write_study(**study), results_dir=tmp_path / "results", progress=False).trials
    assert (trials["state"] == "COMPLETE").all()
    assert (trials["value"] == 10.0 * trials["params_x"]).all()
    path = write_study(**{**study, "objective": "sf_objectives:takes_trial_only"})
    with pytest.raises(ObjectiveError) as info:
        optimize(None, path, results_dir=tmp_path / "other")
    assert "objective(trial, **objective_args) with objective_args ['scale']" in str(info.value)


def test_a_data_less_study_keeps_the_objectives_own_defaults_and_refuses_one_that_needs_data(
        write_study, tmp_path, client4):
    """Without data, `objective(trial, scale=1.0)` was called as objective(trial, None): its
    default became None and every trial failed, where plain Optuna's `optimize` calls
    objective(trial). An objective whose data parameter has no default failed every trial on
    `None` ("'NoneType' object is not subscriptable") before the study stopped."""
    study = {"objective": "sf_objectives:scaled", "sampler": {"name": "random"}, "budget": {"n_trials": 4}}
    trials = optimize(None, write_study(**study), results_dir=tmp_path / "results", progress=False).trials
    assert (trials["state"] == "COMPLETE").all() and (trials["value"] == trials["params_x"]).all()
    for run in (lambda path: optimize(None, path, results_dir=tmp_path / "other", n_workers=1),  # a worker checks it
                lambda path: optimize(None, path, results_dir=tmp_path / "other", client=client4)):  # the driver does
        path = write_study(**{**study, "objective": "sf_objectives:fit_arrays"})
        with pytest.raises(ObjectiveError) as info:
            run(path)
        assert info.value.key == "objective" and "\n" not in str(info.value)
        assert "'fit_arrays' takes data (parameter 'data'), but the study has no data" in str(info.value)
    assert not (tmp_path / "other" / "studies").exists()


@pytest.mark.parametrize("named", ["obj.py:objective", "src/tune/obj.py:objective", "./obj:objective"])
def test_an_objective_named_by_its_file_says_to_name_its_module(write_study, named):
    err = _error(write_study(objective=named))
    assert err.key == "objective" and "names a file; name its module" in str(err)
    assert "'obj:objective'" in str(err) or "'src.tune.obj:objective'" in str(err)


def test_an_objective_without_a_data_parameter_finds_the_studys_data_on_the_trial(write_study, tmp_path):
    import pandas as pd

    study = write_study(objective="sf_objectives:reads_trial_data", sampler={"name": "random"}, budget={"n_trials": 3})
    trials = optimize(None, study, data=pd.DataFrame({"y": [1.0, 2.0, 3.0]}), results_dir=tmp_path / "results",
                      progress=False).trials
    assert (trials["state"] == "COMPLETE").all() and (trials["value"] == 6.0 * trials["params_x"]).all()


def test_objective_with_wrong_signature(write_study, tmp_path):
    path = write_study(objective="sf_objectives:with_data", objective_args={"colour": "red"})
    with pytest.raises(ObjectiveError) as info:
        optimize(None, path, results_dir=tmp_path / "results")
    assert "signature" in str(info.value)
    assert not (tmp_path / "results").exists()


def test_cli_dry_run_prints_resolved_study(write_study, tmp_path):
    path = write_study(objective="sf_objectives:instant", search_space=SPACE, budget={"n_trials": 5})
    out = subprocess.run(
        [sys.executable, "-m", "studyflow.cli", "run", str(path), "--dry-run", "--set", "budget.n_trials=7"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout
    assert "n_trials: 7" in out
    assert "objective: sf_objectives:instant" in out
    assert "# cluster: LocalCluster" in out


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_a_worker_count_that_is_not_positive_is_refused_in_one_line(write_study, tmp_path, workers):
    """`--workers -2` died with a StopIteration traceback once the cluster was up (no worker to
    check the objective on); `--workers 0` silently ran on the default count."""
    path = write_study(objective="sf_objectives:instant", search_space=SPACE, budget={"n_trials": 2})
    proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", str(path), "--workers", workers],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"argument --workers: {workers!r} is not a positive whole number" in proc.stderr.splitlines()[-1]
    with pytest.raises(ValueError, match="n_workers: 0 is not a positive whole number"):
        optimize(None, path, results_dir=tmp_path / "results", n_workers=0)
    assert not (tmp_path / "results").exists()


def test_overriding_a_parameter_whose_name_has_dots_says_how(write_study):
    """OmegaConf reads `search_space.model.lr.high` as a path through `model`; the name
    `model.lr` is reached as `search_space[model.lr].high`, which the message now says."""
    space = {"model.lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True}}
    path = write_study(objective="m:f", search_space=space)
    err = _error(path, ["search_space.model.lr.high=0.2"])
    assert "a name with dots takes brackets: search_space[model.lr].high=0.2" in str(err)
    assert load_study(path, ["search_space[model.lr].high=0.2"]).search_space["model.lr"].high == 0.2


def test_cli_bad_study_is_one_line_and_exit_1(write_study, tmp_path):
    path = write_study(objective="m:f", search_space={"x": {"type": "float", "low": 2, "high": 1}})
    proc = subprocess.run(
        [sys.executable, "-m", "studyflow.cli", "run", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "search_space.x.low" in proc.stderr


def _count_validations(monkeypatch) -> list[str]:
    """A spy on `validate_study` as `load_study` calls it: records each label, then validates."""
    from studyflow.config import _study

    calls: list[str] = []
    real = _study.validate_study

    def spy(cfg, label):
        calls.append(label)
        return real(cfg, label)

    monkeypatch.setattr(_study, "validate_study", spy)
    return calls


def test_a_loaded_study_passed_on_unchanged_is_not_validated_again(write_study, monkeypatch):
    path = write_study(objective="m:f", search_space=SPACE)
    cfg = load_study(path)
    calls = _count_validations(monkeypatch)
    assert load_study(cfg) is cfg
    assert calls == []
    assert load_study(cfg, ["budget.n_trials=3"]).budget.n_trials == 3  # overrides: a new one
    cfg.search_space["x"].low = 5  # changed since it was validated: checked again
    with pytest.raises(ConfigError) as info:
        load_study(cfg)
    assert info.value.key == "search_space.x.low" and str(path) in str(info.value)
    assert calls == [str(path), str(path)]


def test_optimize_validates_the_study_file_once(client4, write_study, tmp_path, monkeypatch):
    path = write_study(objective="sf_objectives:instant", search_space=SPACE, budget={"n_trials": 4})
    calls = _count_validations(monkeypatch)
    result = optimize(None, path, client=client4, results_dir=tmp_path / "results", progress=False)
    assert (result.trials["state"] == "COMPLETE").sum() == 4
    assert calls == [str(path)]


def test_the_cli_validates_the_study_file_once(client4, write_study, tmp_path, monkeypatch):
    import logging
    import signal

    from studyflow.cli import main

    path = write_study(objective="sf_objectives:instant", search_space=SPACE, budget={"n_trials": 4})
    monkeypatch.chdir(tmp_path)  # the run's default log goes to logs/ here
    calls = _count_validations(monkeypatch)
    root, ours = logging.getLogger(), logging.getLogger("studyflow")
    saved = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), list(root.handlers),
             root.level, ours.level)
    try:
        attach = ["cluster.mode=address", f"cluster.address={client4.scheduler.address}"]
        for key, pem in (("tls_ca_file", client4.security.tls_ca_file),  # the cluster speaks TLS
                         ("tls_cert", client4.security.tls_client_cert), ("tls_key", client4.security.tls_client_key)):
            (tmp_path / f"{key}.pem").write_text(pem)
            attach.append(f"cluster.{key}={tmp_path / f'{key}.pem'}")
        code = main(["run", str(path), *(a for kv in attach for a in ("--set", kv)), "--results", "results"])
    finally:  # main() installs signal handlers and log handlers for the process: undo them
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
        for handler in [h for h in root.handlers if h not in saved[2]]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(saved[3])
        ours.setLevel(saved[4])
    assert code == 0
    assert (tmp_path / "results" / "studies" / "study" / "best.json").is_file()
    assert calls == [str(path)]


def test_the_sampler_options_are_built_once_per_process_for_the_same_sections(write_study, monkeypatch):
    from studyflow.optuna_ext import _space
    from studyflow.optuna_ext import check_sampler_options

    built: list[str] = []
    real = _space.make_sampler
    monkeypatch.setattr(_space, "make_sampler", lambda cfg, *a, **k: built.append(cfg.name) or real(cfg, *a, **k))
    monkeypatch.setattr(_space, "_CHECKED", set())
    cfg = load_study(write_study(objective="m:f", search_space=SPACE, sampler={"name": "random", "seed": 2}))
    check_sampler_options(cfg)
    check_sampler_options(cfg)
    assert built == ["study"]
    bad = load_study(cfg, ["sampler.options={no_such_option: 1}"])
    with pytest.raises(ConfigError) as info:
        check_sampler_options(bad)
    assert info.value.key == "sampler.options"
    with pytest.raises(ConfigError):  # a failed check is not kept: it fails again
        check_sampler_options(bad)


def test_an_optimize_job_whose_workers_are_slurm_jobs_asks_for_one_cpu_and_their_walltime():
    from studyflow.config import job_runtime_minutes
    from studyflow.config import optimize_job_threads

    slurm = load_study({"objective": "m:f", "concurrency": 16,
                        "cluster": {"mode": "slurm", "walltime": "1-02:30:00"}})
    local = load_study({"objective": "m:f", "concurrency": 16})
    assert optimize_job_threads(slurm) == 1
    assert optimize_job_threads(local) == 16
    assert optimize_job_threads(load_study({"objective": "m:f"})) is None  # every core given
    assert job_runtime_minutes(slurm) == 1440 + 150 + 10  # the workers' walltime and a margin
    assert job_runtime_minutes(local) == 60


def test_keys_added_later_leave_the_hashes_of_a_study_that_does_not_set_them():
    # upgrading studyflow must not re-run (config hash) or restart (identity hash) a user's
    # studies: these are the hashes this study had before warm_start_study existed (760df53)
    cfg = load_study({"objective": "m:f", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
                      "budget": {"n_trials": 5}}, name="s")
    assert (cfg.config_hash(), cfg.identity_hash()) == ("8d32e090ecbee43c", "2a7cbdc8ec977666")


def test_metric_names_rerun_the_optimize_job_but_keep_the_studys_journal():
    # names label the outputs (trials.parquet's columns, the card): the job writes them again,
    # resuming the same journal, whose trials do not depend on them
    base = {"objective": "m:f", "directions": ["maximize", "minimize"], "search_space": SPACE}
    plain, named = load_study(base, name="s"), load_study({**base, "metric_names": ["sharpe", "drawdown"]}, name="s")
    assert plain.config_hash() != named.config_hash() and plain.identity_hash() == named.identity_hash()
    with pytest.raises(ConfigError, match="metric_names: the names must differ"):
        load_study({**base, "metric_names": ["a", "a"]}, name="s")


def test_overrides_for_a_study_that_does_not_exist_fail_naming_the_key(write_study):
    """`--config 'overrides={"toyy": [...]}'`, a misspelt study: "Nothing to be done", the
    override silently ignored. An override for a study this run does not select (another
    study file of the folder) is still fine."""
    from studyflow.config import WorkflowConfig

    path = write_study(objective="m:f", search_space=SPACE)
    folder, name = str(path.parent), path.stem
    write_study("other", objective="m:f", search_space=SPACE)
    raw = {"studies": [name], "study_dir": folder,
           "overrides": {"other": ["budget.n_trials=3"], f"{name}y": ["budget.n_trials=3"]}}
    with pytest.raises(ConfigError) as err:
        WorkflowConfig.from_dict(raw, source="config/config.yaml").load_all()
    assert err.value.key == f"overrides.{name}y" and f"no study {name}y" in err.value.message
    del raw["overrides"][f"{name}y"]
    assert list(WorkflowConfig.from_dict(raw).load_all()) == [name]
