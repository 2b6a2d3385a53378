"""The trials table a study leaves (trials.parquet, `StudyResult.trials`) is built and written
with pyarrow alone, and reads back exactly as the DataFrame pandas built from the same rows
before: same columns in the same order, same dtypes, same values."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import TrialState
from optuna.trial import create_trial

from studyflow.outputs import trials_frame
from studyflow.outputs import trials_table
from studyflow.outputs import write_table
from studyflow.outputs._trials_table import _column_group
from studyflow.outputs._trials_table import trial_rows

F, I, C = FloatDistribution(0, 1), IntDistribution(0, 9), CategoricalDistribution(["a", 1, None])


def _trial(number, state, values, params, user_attrs, system_attrs):
    dists = {"x": F, "n": I, "c": C}
    trial = create_trial(state=state, values=values, params=params, user_attrs=user_attrs, system_attrs=system_attrs,
                         distributions={k: dists[k] for k in params})
    trial.number = number
    return trial


def _trials(n_objectives: int) -> list:
    """Out of order, every kind of column: a define-by-run param some trials lack, a categorical
    of mixed choices, user attrs of ints and floats, lists and dicts, bools with a gap, mixed
    kinds, a constraint, a retry, a cached trial."""
    values = (lambda v: None if v is None else [v] * n_objectives)
    return [
        _trial(2, TrialState.COMPLETE, values(0.5), {"x": 0.1, "c": "a", "n": 3},
               {"u": 1, "l": [1, 2], "b": True, "m": 1, "s": "x"},
               {"studyflow:worker": "w1", "studyflow:key": "k2", "studyflow:duration_s": 0.5, "constraints:c0": 0.2}),
        _trial(0, TrialState.FAIL, None, {"x": 0.3, "c": 1}, {"u": 2.5, "l": {"a": 1}, "b": None, "m": "s", "s": "y"},
               {"studyflow:error": "ValueError: boom", "studyflow:retry_of": 1, "studyflow:attempt": 1}),
        _trial(1, TrialState.PRUNED, values(1.0), {"x": 0.2, "c": None}, {"l": "t", "b": False, "m": "z", "s": None},
               {"studyflow:cached": True}),
        _trial(3, TrialState.COMPLETE, values(float("inf")), {"x": 0.2, "c": None, "n": 4},
               {"l": "t", "b": False, "u": 3, "m": 2, "s": "z", "nan": float("nan")}, {}),
        _trial(4, TrialState.RUNNING, None, {"x": 0.4, "c": "a", "n": 1},  # interrupted: no datetime_complete
               {"u": 4, "l": "t", "b": True, "m": 3, "s": "w"}, {}),
    ]


def _value_cols(n_objectives: int) -> list[str]:
    return ["value"] if n_objectives == 1 else [f"values_{i}" for i in range(n_objectives)]


def _as_pandas_built_it(trials: list, n_objectives: int) -> pd.DataFrame:
    """The table as studyflow built it with pandas until the tables moved to pyarrow."""
    value_cols = _value_cols(n_objectives)
    rows = trial_rows(trials, value_cols)
    df = pd.DataFrame(rows, columns=None if rows else [
        "number", "state", *value_cols, "datetime_start", "datetime_complete", "duration_s", "worker",
        "error", "attempt", "retry_of", "key", "cached", "artifacts"])
    if not rows:
        df = df.astype({"number": "int64", "attempt": "int64", "cached": "bool", "duration_s": "float64",
                        "datetime_start": "datetime64[ns]", "datetime_complete": "datetime64[ns]"})
    df["retry_of"] = df["retry_of"].astype("Int64")
    for col in value_cols:
        df[col] = df[col].astype("float64")
    for col in ("worker", "error", "state", "key", "artifacts"):
        df[col] = df[col].astype("string")
    for col in df.columns:
        if col.startswith(("params_", "user_attrs_")) and df[col].dtype == object:
            kinds = {type(v) for v in df[col].dropna()}
            if len(kinds) > 1 or kinds & {list, dict}:
                df[col] = df[col].map(lambda v: None if v is None else json.dumps(v) if isinstance(v, (list, dict))
                                      else str(v))
    # grouped since (params together, a later trial's too: the order itself is pinned below)
    return df[sorted(df.columns, key=_column_group)].sort_values("number", ignore_index=True)


@pytest.mark.parametrize("n_objectives", [1, 2])
def test_the_trials_table_reads_back_as_the_dataframe_pandas_built(tmp_path, n_objectives):
    trials = _trials(n_objectives)
    expected = _as_pandas_built_it(trials, n_objectives)
    pd.testing.assert_frame_equal(trials_frame(trials, _value_cols(n_objectives)), expected)  # StudyResult.trials
    expected.to_parquet(tmp_path / "pandas.parquet", index=False)
    write_table(trials_table(trials, _value_cols(n_objectives)), tmp_path / "trials.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "trials.parquet"),
                                  pd.read_parquet(tmp_path / "pandas.parquet"))


def test_a_study_without_trials_still_has_its_columns_and_dtypes(tmp_path):
    expected = _as_pandas_built_it([], 1)
    pd.testing.assert_frame_equal(trials_frame([], ["value"]), expected)
    write_table(trials_table([], ["value"]), tmp_path / "trials.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "trials.parquet"), expected)


def test_a_conditional_spaces_later_parameters_sit_with_the_others():
    """Each branch's parameters first appear in a later trial: their columns came after
    `artifacts` and the user attrs, away from the other parameters."""
    trials = [_trial(0, TrialState.COMPLETE, [1.0], {"c": "a"}, {"u": 1}, {"constraints:c0": 0.1}),
              _trial(1, TrialState.COMPLETE, [2.0], {"c": 1, "x": 0.5}, {"u": 2, "v": 3}, {"constraints:c0": 0.1}),
              _trial(2, TrialState.COMPLETE, [3.0], {"c": None, "n": 4}, {}, {"constraints:c0": 0.2})]
    assert list(trials_frame(trials, ["value"]).columns) == [
        "number", "state", "value", "params_c", "params_x", "params_n", "datetime_start", "datetime_complete",
        "duration_s", "worker", "error", "attempt", "retry_of", "key", "cached", "artifacts", "user_attrs_u",
        "user_attrs_v", "constraints_c0"]


def test_times_read_back_to_the_microsecond_and_an_aware_time_in_utc():
    """Optuna's times are naive (local); one with a time zone, which no Optuna storage gives,
    is still written, as numpy reads it: in UTC."""
    naive = [_trial(0, TrialState.COMPLETE, [1.0], {"x": 0.5}, {}, {}),
             _trial(1, TrialState.RUNNING, None, {}, {}, {})]
    naive[0].datetime_start = datetime(2026, 12, 4, 19, 6, 31, 123457)
    aware = _trial(2, TrialState.COMPLETE, [1.0], {"x": 0.5}, {}, {})
    an_hour_east = timezone(timedelta(hours=1))
    aware.datetime_start = aware.datetime_complete = datetime(2026, 12, 4, 20, 6, 31, 5, tzinfo=an_hour_east)
    starts = trials_table(naive, ["value"]).column("datetime_start").to_pylist()
    assert starts[0] == datetime(2026, 12, 4, 19, 6, 31, 123457) and starts[1] == naive[1].datetime_start
    assert trials_table(naive, ["value"]).column("datetime_complete").to_pylist()[1] is None
    assert trials_table([aware], ["value"]).column("datetime_start").to_pylist() == [datetime(2026, 12, 4, 19, 6, 31, 5)]


def test_a_gap_in_a_column_of_mixed_kinds_stays_missing():
    """pandas wrote the string 'nan' for a trial without a user attr whose other values were
    of mixed kinds; it is missing now."""
    trials = [_trial(0, TrialState.COMPLETE, [1.0], {"x": 0.5}, {"m": 1}, {}),
              _trial(1, TrialState.COMPLETE, [1.0], {"x": 0.5}, {}, {}),
              _trial(2, TrialState.COMPLETE, [1.0], {"x": 0.5}, {"m": "a"}, {})]
    assert trials_frame(trials, ["value"])["user_attrs_m"].tolist()[0::2] == ["1", "a"]
    assert pd.isna(trials_frame(trials, ["value"])["user_attrs_m"][1])


def test_an_int_beyond_64_bits_stays_exact_text_when_some_trials_lack_it(tmp_path):
    """A digest some trials set: the column became float64 (1.1805916207174113e+21) as soon as
    one trial had no value, where the README promises the int kept exactly, as text."""
    trials = [_trial(0, TrialState.COMPLETE, [1.0], {"x": 0.5}, {"big": 2**70 + 1, "mixed": 2**70}, {}),
              _trial(1, TrialState.COMPLETE, [1.0], {"x": 0.5}, {"mixed": 0.5}, {}),
              _trial(2, TrialState.COMPLETE, [1.0], {"x": 0.5}, {"big": 7, "mixed": 3}, {})]
    write_table(trials_table(trials, ["value"]), tmp_path / "trials.parquet")
    table = pd.read_parquet(tmp_path / "trials.parquet")
    assert table["user_attrs_big"].tolist()[0::2] == [str(2**70 + 1), "7"] and pd.isna(table["user_attrs_big"][1])
    assert table["user_attrs_mixed"].tolist() == [str(2**70), "0.5", "3"]


def test_the_table_is_built_pickled_and_written_without_importing_pandas(tmp_path):
    probe = textwrap.dedent(f'''
        import pickle, sys
        from optuna.distributions import CategoricalDistribution, FloatDistribution
        from optuna.trial import create_trial
        from studyflow.outputs import trials_table, why_no_scores, write_table

        trials = [create_trial(value=float(i), params={{"x": i / 10, "c": "ab"[i % 2]}},
                               distributions={{"x": FloatDistribution(0, 1), "c": CategoricalDistribution("ab")}},
                               user_attrs={{"flag": i % 2 == 0, "tags": [i]}}) for i in range(6)]
        table = pickle.loads(pickle.dumps(trials_table(trials, ["value"])))
        write_table(table, {str(tmp_path / "trials.parquet")!r})
        assert why_no_scores(table) is None
        print(sorted({{"pandas"}} & set(sys.modules)))
    ''')
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert pd.read_parquet(tmp_path / "trials.parquet")["user_attrs_flag"].tolist() == [True, False] * 3
