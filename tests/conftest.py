"""Shared fixtures: a real LocalCluster (processes) and helpers to write study files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).parent
REPO = TESTS.parent

# Worker processes are spawned: they find the test objectives through PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p
)
sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def client4():
    """A real 4-worker LocalCluster (one process each), shared by the engine tests."""
    from studyflow.driver import connect

    with connect(4) as client:
        yield client


@pytest.fixture
def write_study(tmp_path):
    """Write a study file from a dict; return its path."""

    def write(stem: str = "study", **fields) -> Path:
        path = tmp_path / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(fields, sort_keys=False))
        return path

    return write
