"""Private Optuna and distributed names live in `studyflow._compat` only, pinned here.

A new Optuna or distributed release may rename any of them: then this set is what to check,
and `_compat` refuses an untested version at import with one line instead of failing mid-study.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.samplers import GridSampler
from optuna.samplers import TPESampler

import studyflow
from studyflow import _compat

SRC = Path(studyflow.__file__).parent
# Every private name `_compat` takes from Optuna or distributed: a private module, a name
# imported from one, or an attribute read off an object.
PINNED = {
    "optuna._transform", "optuna.samplers._tpe.parzen_estimator", "optuna.samplers._tpe.sampler",
    "optuna.study._tell", "optuna.storages.journal._storage",
    "_SearchSpaceTransform", "_untransform_numerical_param", "_ParzenEstimator", "_split_trials", "_get_infeasible_trial_score",
    "_tell_with_warning", "_storage", "_study_id", "_trial_id", "_rng", "_replay_result",
    "_trials", "_study_id_to_trial_ids", "_thread_local", "_relative_params", "_stop_flag",
    "_forkserver_preload_set", "_get_latest_trial", "_filter_study", "_init_msg_interval",
    "_client_ssl_defaults",  # tornado.iostream's, waiting for the driver's thread (build_tls_defaults_soon)
}
TPE_MEMBERS = {
    "_sample", "_build_parzen_estimator", "_compare", "_compute_acquisition_func", "_get_params",
    "_get_internal_repr", "_gamma", "_constant_liar", "_rng", "_n_ei_candidates",
    "_parzen_estimator_cls", "_parzen_estimator_parameters",
}
GRID_MEMBERS = {"_n_min_trials", "_all_grids", "_param_names", "_search_space", "_same_search_space",
                "_get_unvisited_grid_ids"}
JOURNAL_MEMBERS = {"_thread_lock", "_sync_with_backend", "_replay_result"}
# the replay result's members OwnWritesJournalStorage changes as the replay does
REPLAY_MEMBERS = {"_studies", "_trials", "_study_id_to_trial_ids", "_trial_id_to_study_id",
                  "_worker_id_to_owned_trial_id"}


def _private_names_taken(tree: ast.AST) -> set[str]:
    """Private names imported from optuna/distributed, or read as `obj._name` off anything but
    `self`/`cls` (an object of studyflow's own never has its privates read from outside) or
    `os` (whose `os._exit` is public, documented API)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("optuna", "distributed"):
            names |= {a.name for a in node.names if a.name.startswith("_")}
            if any(part.startswith("_") for part in (node.module or "").split(".")):
                names.add(node.module)  # a private module, named whole
        if isinstance(node, ast.Attribute) and re.match(r"^_[a-z]", node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls", "os")):
                names.add(node.attr)
    return names


def _own_private_names() -> set[str]:
    """`_names` studyflow defines itself (methods and attributes of its own classes)."""
    own = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
                own.add(node.name)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                own.add(node.attr)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
    return own - TPE_MEMBERS - JOURNAL_MEMBERS - PINNED


def test_the_private_names_compat_takes_are_the_pinned_set():
    taken = _private_names_taken(ast.parse((SRC / "_compat.py").read_text()))
    assert taken - _own_private_names() == PINNED
    assert set(_compat.TPE_SAMPLER_MEMBERS) == TPE_MEMBERS
    assert set(_compat.GRID_SAMPLER_MEMBERS) == GRID_MEMBERS
    assert set(_compat.JOURNAL_STORAGE_MEMBERS) == JOURNAL_MEMBERS
    assert set(_compat.JOURNAL_REPLAY_MEMBERS) == REPLAY_MEMBERS | {"log_number_read", "worker_id"}


def test_no_other_module_takes_a_private_optuna_or_distributed_name():
    own = _own_private_names()
    # a subclass reaches its parent's members, declared in _compat
    parents = {"_tpe.py": TPE_MEMBERS, "_grid.py": GRID_MEMBERS, "_journal.py": JOURNAL_MEMBERS,
               "_own_writes.py": JOURNAL_MEMBERS | REPLAY_MEMBERS | {"_last_created_trial_id_by_this_process"}}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        taken = _private_names_taken(ast.parse(path.read_text())) - own - parents.get(path.name, set())
        assert not taken, f"{path.relative_to(SRC)} uses {sorted(taken)}: reach them through _compat"


def test_the_remote_trial_sets_only_the_trial_member_compat_declares():
    """`optuna.artifacts.upload_artifact` reads `trial._trial_id`: the one member of
    `optuna.Trial` that RemoteTrial sets without calling its constructor."""
    trial_members = set(re.findall(r"self\.(_\w+) = ", (SRC / "worker/_trial.py").read_text()))
    assert trial_members & set(_compat.TRIAL_MEMBERS) == {"_trial_id"} == set(_compat.TRIAL_MEMBERS)


def test_the_subclasses_use_only_the_parent_members_compat_declares():
    tpe_used = set(re.findall(r"(?:self|TPESampler)\.(_\w+)", (SRC / "optuna_ext/_tpe.py").read_text()))
    assert tpe_used & set(dir(TPESampler(seed=0))) <= TPE_MEMBERS | {"_sample"}
    grid_used = set(re.findall(r"(?:self\.|def )(_[a-z]\w*)", (SRC / "optuna_ext/_grid.py").read_text()))  # used or overridden
    assert grid_used & set(dir(GridSampler({"x": [0]}))) == GRID_MEMBERS
    parent = _compat.JournalStorage(_compat._EmptyJournal())
    for subclass in ("_journal.py", "_own_writes.py"):
        journal_used = set(re.findall(r"self\.(_\w+)", (SRC / "optuna_ext" / subclass).read_text()))
        assert journal_used & set(vars(parent)) | (journal_used & set(dir(type(parent)))) <= JOURNAL_MEMBERS
    replay_used = set(re.findall(r"replay\.(_?\w+)", (SRC / "optuna_ext/_own_writes.py").read_text()))
    assert replay_used <= set(dir(parent._replay_result)) | {"_last_created_trial_id_by_this_process"}
    assert replay_used - {"_last_created_trial_id_by_this_process"} <= set(_compat.JOURNAL_REPLAY_MEMBERS)


def test_the_forkserver_preload_flag_compat_sets_is_still_distributeds():
    """`keep_own_forkserver_preload` sets it; without it the driver imports pandas again."""
    import distributed.utils

    assert isinstance(distributed.utils._forkserver_preload_set, bool)


def test_the_nanny_poll_interval_compat_sets_is_still_distributeds_and_a_local_cluster_uses_it():
    """`hear_worker_starts_soon` sets it: without it a local cluster is up 0-50 ms after its
    last worker started (`benchmarks/startup.py` measures the start)."""
    from distributed.nanny import WorkerProcess

    from studyflow.driver import connect

    assert isinstance(WorkerProcess._init_msg_interval, float)
    with connect(1) as client:
        assert WorkerProcess._init_msg_interval == _compat.WORKER_START_POLL_S
        assert len(client.scheduler_info()["workers"]) == 1


def test_distributed_names_come_through_compat():
    import asyncio
    import threading

    assert asyncio.run(_compat.offload(threading.get_ident)) != threading.get_ident()  # off the loop's thread
    assert "distributed" not in subprocess.run(
        [sys.executable, "-c", "import sys, studyflow._compat; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True).stdout  # imported where it is used


@pytest.mark.parametrize("package, installed", [("optuna", "4.2.1"), ("optuna", "6.0.0"), ("distributed", "2024.2.0")])
def test_an_untested_version_fails_at_import_in_one_line_naming_the_range(monkeypatch, package, installed):
    real = _compat.version
    monkeypatch.setattr(_compat, "version", lambda name: installed if name == package else real(name))
    with pytest.raises(ImportError) as caught:
        _compat.check_versions()
    message = str(caught.value)
    assert "\n" not in message and f"{package} {installed} is installed" in message
    assert f"studyflow needs {package}>=" in message


def test_pyproject_states_the_range_compat_checks():
    pyproject = (SRC.parent.parent / "pyproject.toml").read_text()
    assert '"optuna>=5.0,<6"' in pyproject and '"distributed>=2024.8"' in pyproject
    assert _compat.SUPPORTED == {"optuna": ((5, 0), (6, 0)), "distributed": ((2024, 8), None)}
