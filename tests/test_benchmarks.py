"""Smoke test: a benchmark script runs end to end on a tiny size and prints its table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_sample_efficiency_on_the_shipped_trading_study_prints_four_runners():
    proc = subprocess.run(
        [sys.executable, "scheduling.py", "--sections", "efficiency", "--functions", "trading_tpe", "--seeds", "1"],
        cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    runners = [row.split("|")[1].strip() for row in rows[1:]]
    assert runners == ["random search", "sequential TPE (concurrency 1)", "TPE async, concurrency 8",
                       "TPE reproducible, c = 8"]
    assert all(float(row.split("|")[2]) > 0 for row in rows[1:])  # a positive mean best Sharpe
