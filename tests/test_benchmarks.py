"""Smoke test: a benchmark script runs end to end on a tiny size and prints its table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def run_script(*args: str) -> tuple[str, list[str]]:
    """A benchmark script's output and its markdown table rows (header first, rule left out)."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO / "benchmarks", capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]


def test_sample_efficiency_on_the_shipped_trading_study_prints_five_runners_with_ranks():
    _, rows = run_script("scheduling.py", "--sections", "efficiency", "--functions", "trading_tpe", "--seeds", "1")
    runners = [row.split("|")[1].strip() for row in rows[1:]]
    assert runners == ["random search", "sequential TPE (concurrency 1)", "TPE async, concurrency 8",
                       "TPE async, concurrency 8, prefetch 0", "TPE reproducible, c = 8"]
    assert all(float(row.split("|")[2]) > 0 for row in rows[1:])  # a positive mean best Sharpe
    ranks = sorted(float(row.split("|")[4]) for row in rows[1:])  # one seed: ranks 1..5, ties averaged
    assert sum(ranks) == 15 and ranks[0] >= 1 and ranks[-1] <= 5


def test_parallel_tpe_prints_every_treatment_with_shares_against_sequential_tpe():
    out, lines = run_script("parallel_tpe.py", "--functions", "branin", "--seeds", "2", "--processes", "1")
    rows = [line.split("|") for line in lines]
    runs = [(row[1].strip(), int(row[2])) for row in rows[1:]]
    assert runs == [("random search", 1), ("constant liar (Optuna)", 1), ("constant liar (Optuna)", 2),
                    ("constant liar (Optuna)", 4), ("constant liar (Optuna)", 8), ("no liar", 8),
                    ("startup counts running", 8), ("believer: nearest finished", 8),
                    ("believer: median", 8), ("local penalty", 8)]
    shares = {run: row[5].strip() for run, row in zip(runs, rows[1:])}
    assert shares[("random search", 1)] == "0%" and shares[("constant liar (Optuna)", 1)] == "100%"
    best = [float(row[3]) for row in rows[1:]]
    assert all(b >= 0.397887 for b in best)  # no run beats Branin's global minimum
    assert "Sequential TPE reaches the mean best" in out


def test_define_by_run_table_prints_declared_define_by_run_and_random_rows():
    _, rows = run_script("define_by_run.py", "--sections", "table", "--seeds", "1", "--trials", "30")
    runs = [(row.split("|")[1].strip(), row.split("|")[2].strip()) for row in rows if not row.startswith("| parameters declared")]
    assert runs == [("parameters in search_space", "tpe"), ("define-by-run", "tpe"), ("define-by-run", "random")] * 2
    assert all(float(row.split("|")[3]) >= 0 for row in rows if not row.startswith("| parameters declared"))


def test_load_prints_a_row_per_loop_count_with_the_budget_checked():
    _, rows = run_script("load.py", "--trials", "400", "--loops", "4,16", "--workers", "2")
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["4", "16"]
    assert all(row.split("|")[5].strip() == "yes" for row in rows[1:])


def test_startup_times_whole_studyflow_runs_beside_the_journal_runner_each_checking_its_trials():
    _, rows = run_script("startup.py", "--rows", "one", "--repeats", "1")
    table = [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows[1:]]
    assert [(case, runner) for case, runner, _, _ in table] == [
        ("1-trial study, 2 workers", "studyflow"),
        ("1-trial study, 2 workers", "Optuna, one process, journal file"),
        ("1-trial study, 8 workers", "studyflow")]
    assert all(float(wall) > 0 and checked == "1 COMPLETE" for _, _, wall, checked in table)


def test_carried_prints_studyflow_and_optuna_rows_with_their_trials_checked():
    _, rows = run_script("carried.py", "--repeats", "1", "--mb", "8", "--workers", "2")
    assert [row.split("|")[2].strip() for row in rows[1:]] == ["studyflow", "Optuna, one process, n_jobs threads"]
    assert all(float(row.split("|")[4]) > 8 and row.split("|")[5].strip() == "200 COMPLETE" for row in rows[1:])
