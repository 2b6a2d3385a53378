"""A trial's key covers the objective's code: its package, the project modules it imports, and
the versions of the libraries the study file names under `code.packages`. Real studies run by
the CLI in a fresh process each time, on real files in a temporary project."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from studyflow.store import code_version

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}
N_TRIALS = 4

COUNTING_OBJECTIVE = (
    "import os\n"
    "{imports}\n"
    "def objective(trial):\n"
    "    {lazy}\n"
    "    with open(os.environ['SF_COUNT_FILE'], 'a') as f:\n"
    "        f.write('evaluated\\n')\n"
    "    return {body}\n"
)


def _study(tmp_path: Path, objective: str, **extra) -> Path:
    path = tmp_path / "study.yaml"
    study = {"objective": objective, "search_space": SPACE, "scheduling": "reproducible", "concurrency": 1,
             "sampler": {"name": "random", "seed": 5}, "budget": {"n_trials": N_TRIALS}, **extra}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _run(tmp_path: Path, study: Path, pythonpath: list[Path] = ()) -> tuple[int, pd.DataFrame]:
    """`studyflow run` in a new process; (evaluations it made, its trials table)."""
    count = tmp_path / "count.txt"
    before = len(count.read_text().splitlines()) if count.exists() else 0
    env = {**os.environ, "SF_COUNT_FILE": str(count),
           "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", str(study), "--workers", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = len(count.read_text().splitlines()) if count.exists() else 0
    return after - before, pd.read_parquet(tmp_path / "results/studies/study/trials.parquet")


def _forget_studies(tmp_path: Path) -> None:
    """Lose every study journal, keep the trial store: a rerun is answered by keys alone."""
    shutil.rmtree(tmp_path / "results/.store/journals")


def test_editing_a_helper_module_in_the_objectives_package_reruns_its_trials(tmp_path):
    pkg = tmp_path / "myproj"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models/__init__.py").write_text("")
    (pkg / "helpers.py").write_text("def scale(x):\n    return x\n")
    (pkg / "models/objective.py").write_text(COUNTING_OBJECTIVE.format(
        imports="from myproj.helpers import scale", lazy="pass", body="scale(trial.params['x'])"))
    study = _study(tmp_path, "myproj.models.objective:objective")

    evaluated, first = _run(tmp_path, study)
    assert evaluated == N_TRIALS and not first["cached"].any()
    _forget_studies(tmp_path)
    evaluated, again = _run(tmp_path, study)  # nothing edited: every trial from the store
    assert evaluated == 0 and again["cached"].all()
    assert again["key"].tolist() == first["key"].tolist()

    (pkg / "helpers.py").write_text("def scale(x):\n    return 2 * x\n")
    evaluated, edited = _run(tmp_path, study)  # the user's rerun after an edit: no store answer
    assert evaluated == N_TRIALS and not edited["cached"].any()
    assert set(edited["key"]).isdisjoint(first["key"])
    assert edited["value"].tolist() == pytest.approx([2 * v for v in first["value"]])


def test_editing_a_sibling_module_a_top_level_objective_imports_reruns_its_trials(tmp_path):
    """A single-file objective beside the study file: the project modules it imports (at the
    top or inside the function, absolute or relative to a package) are in its key; other
    files in the folder are not."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/__init__.py").write_text("")
    (tmp_path / "lib/transforms.py").write_text("from .consts import OFFSET\n\ndef shift(x):\n    return x + OFFSET\n")
    (tmp_path / "lib/consts.py").write_text("OFFSET = 0.0\n")
    (tmp_path / "unrelated.py").write_text("A = 1\n")
    (tmp_path / "toplevel_obj.py").write_text(COUNTING_OBJECTIVE.format(
        imports="", lazy="from lib.transforms import shift", body="shift(trial.params['x'])"))
    study = _study(tmp_path, "toplevel_obj:objective")

    evaluated, first = _run(tmp_path, study)
    assert evaluated == N_TRIALS
    (tmp_path / "unrelated.py").write_text("A = 2\n")  # imported by nobody: same keys
    _forget_studies(tmp_path)
    evaluated, again = _run(tmp_path, study)
    assert evaluated == 0 and again["cached"].all()

    (tmp_path / "lib/consts.py").write_text("OFFSET = 10.0\n")  # two imports away, relative
    evaluated, edited = _run(tmp_path, study)
    assert evaluated == N_TRIALS and not edited["cached"].any()
    assert edited["value"].tolist() == pytest.approx([v + 10 for v in first["value"]])


def _install_fake_distribution(where: Path, name: str, version: str) -> None:
    """A distribution as pip leaves it: `<name>-<version>.dist-info/METADATA` on sys.path."""
    for old in where.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    info = where / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_a_changed_version_of_a_package_in_code_packages_gives_new_keys(tmp_path):
    dists = tmp_path / "dists"
    _install_fake_distribution(dists, "sf_fake_lib", "1.0")
    (tmp_path / "plain_obj.py").write_text(COUNTING_OBJECTIVE.format(
        imports="", lazy="pass", body="trial.params['x']"))
    study = _study(tmp_path, "plain_obj:objective", code={"packages": ["sf-fake-lib", "pandas"]})

    evaluated, first = _run(tmp_path, study, [dists])
    assert evaluated == N_TRIALS
    _forget_studies(tmp_path)
    evaluated, again = _run(tmp_path, study, [dists])
    assert evaluated == 0 and again["cached"].all()

    _install_fake_distribution(dists, "sf_fake_lib", "1.1")
    evaluated, upgraded = _run(tmp_path, study, [dists])
    assert evaluated == N_TRIALS and not upgraded["cached"].any()
    assert set(upgraded["key"]).isdisjoint(first["key"])


def test_objective_version_overrides_the_source_but_packages_still_count(tmp_path, monkeypatch):
    from studyflow.objectives.hgb import objective

    dists = tmp_path / "dists"
    _install_fake_distribution(dists, "sf_fake_lib", "1.0")
    monkeypatch.syspath_prepend(str(dists))
    assert code_version(objective, "v1") == "explicit:v1"  # as before: no packages, same keys
    v1 = code_version(objective, "v1", ["sf_fake_lib"])
    assert code_version(objective, "v1", ["SF-Fake.Lib"]) == v1  # one name, however spelt
    _install_fake_distribution(dists, "sf_fake_lib", "2.0")
    importlib.invalidate_caches()  # this process read the old one (a new process needs nothing)
    assert code_version(objective, "v1", ["sf_fake_lib"]) != v1


def test_an_unknown_package_in_code_packages_is_one_line_naming_the_file_and_key(tmp_path):
    (tmp_path / "plain_obj.py").write_text("def objective(trial):\n    return trial.params['x']\n")
    study = _study(tmp_path, "plain_obj:objective", code={"packages": ["no-such-distribution-sf"]})
    proc = subprocess.run([sys.executable, "-m", "studyflow.cli", "run", str(study), "--workers", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"studyflow: error: {study}: code.packages: 'no-such-distribution-sf'")
    assert not (tmp_path / "results").exists()


def test_the_code_version_read_from_source_files_is_the_one_of_the_imported_objective(tmp_path, monkeypatch):
    """A local cluster's driver reads the version without importing the module: the keys must
    not change with that (a store would stop answering its own trials)."""
    from studyflow.store import objective_code_version
    from studyflow.worker import import_objective

    pkg = tmp_path / "vproj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("def scale(x):\n    return x\n")
    (pkg / "objective.py").write_text("from vproj.helpers import scale\n\ndef objective(trial):\n    return 0.0\n")
    (tmp_path / "single_vmod.py").write_text("def objective(trial):\n    return 1.0")  # no final newline
    monkeypatch.syspath_prepend(str(tmp_path))
    for ref in ("vproj.objective:objective", "single_vmod:objective", "studyflow.objectives.hgb:objective"):
        from_source = objective_code_version(ref, None, ["optuna"])
        assert from_source == code_version(import_objective(ref), None, ["optuna"]), ref
    assert objective_code_version("vproj.objective:objective", "v7") == "explicit:v7"


def test_a_values_pickle_hash_is_that_of_the_bytes_cloudpickle_ships_so_earlier_keys_stay():
    # a closure's values, arrays bigger than a pickle frame among them: hashed as they are pickled
    import functools
    import hashlib

    import cloudpickle
    import numpy as np

    from studyflow._hashing import pickle_sha256

    values = [functools.partial(max, np.arange(100_000.0)), (np.ones((300, 300)), list(range(10))), {"a": 1.5}]
    for value in values:
        assert pickle_sha256(value) == hashlib.sha256(cloudpickle.dumps(value, protocol=5)).hexdigest()
