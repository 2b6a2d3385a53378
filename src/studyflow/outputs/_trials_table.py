"""A study's trials as an Arrow table, built and written without pandas.

pandas costs a driver ~0.35 s of CPU to import, most of a 1-trial `studyflow run`'s wait for
its tables, and it competes with the study server for the driver's CPU. pyarrow alone is
~0.07 s. So the table that `trials.parquet` holds is built here with pyarrow, and carries the
pandas metadata (pandas' documented parquet schema, `pandas` key) that makes
`pd.read_parquet` and `Table.to_pandas()` give the same columns and dtypes a DataFrame built
by pandas would have had: `string` text columns, a nullable `Int64` `retry_of`.
"""

from __future__ import annotations

import functools
import json
import numbers
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from importlib.metadata import version
from pathlib import Path
from types import NoneType
from typing import Any

import numpy as np
import pyarrow as pa
from optuna.trial import FrozenTrial

from studyflow._attrs import ATTEMPT_ATTR
from studyflow._attrs import CACHED_ATTR
from studyflow._attrs import DURATION_ATTR
from studyflow._attrs import INFRA_ERRORS
from studyflow._attrs import ERROR_ATTR
from studyflow._attrs import KEY_ATTR
from studyflow._attrs import NOT_RUN_ATTR
from studyflow._attrs import RETRY_OF_ATTR
from studyflow._attrs import WARM_START_ATTR
from studyflow._attrs import WORKER_ATTR
from studyflow._io import atomic_write
from studyflow.store import TrialStore
from studyflow.worker import CONSTRAINT_PREFIX

TEXT = ("state", "worker", "error", "key", "artifacts")  # pandas' nullable `string` dtype
# Each fixed column's kind and the pandas dtype a reader gets (as pandas names it in its
# metadata); values, params, user attrs and constraints are typed from their values.
FIXED = {
    "number": ("int", "int64"),
    "datetime_start": ("datetime", "datetime64"),  # the unit pandas would use
    "datetime_complete": ("datetime", "datetime64"),
    "duration_s": ("float", "float64"),
    "attempt": ("int", "int64"),
    "retry_of": ("int", "Int64"),
    "cached": ("bool", "bool"),
    **{name: ("text", "string") for name in TEXT},
}
_PANDAS_TYPE = {"int64": "int64", "Int64": "int64", "float64": "float64", "bool": "bool", "string": "unicode",
                "datetime64[us]": "datetime", "datetime64[ns]": "datetime", "object": "object"}
_EPOCH, _MICROSECOND = datetime(1970, 1, 1), timedelta(microseconds=1)
_READER_DTYPE = {"int": "int64", "float": "float64", "bool": "bool", "text": "object", "null": "object"}


@dataclass
class FinalTables:
    """A finished study's trials table and best trial(s), as its driver gets them: built by the
    server from the trials it holds, or from the journal if the scheduler lost the study."""

    trials: pa.Table
    best: dict[str, Any]


def trials_table(trials: list[FrozenTrial], value_cols: list[str], store: TrialStore | None = None) -> pa.Table:
    """One row per trial, in number order: number, state, the values (`value_cols`, one per
    objective: `StudyConfig.value_columns`), params_<name>, times,
    worker, error, attempt, retry_of, key, cached, artifacts (the trial's folder in the store,
    if it wrote one), user_attrs_<name>, and constraints_<key> in a constrained study. Trials
    sampled but never run (held by a loop when the study stopped) and an earlier study's trials
    copied in by `warm_start` are left out."""
    rows = trial_rows(trials, value_cols, store)
    names: dict[str, None] = dict.fromkeys(
        ["number", "state", *value_cols, "datetime_start", "datetime_complete", "duration_s", "worker",
         "error", "attempt", "retry_of", "key", "cached", "artifacts"] if not rows else [])
    for row in rows:  # columns in the order they first appear, as a DataFrame of the rows has them
        if not names.keys() >= row.keys():
            names.update(dict.fromkeys(row))
    names = dict.fromkeys(sorted(names, key=_column_group))  # a stable sort: first seen within a group
    rows.sort(key=lambda row: row["number"])
    columns, dtypes = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        if name in FIXED:
            kind, dtype = FIXED[name]
            if kind == "datetime":  # what pandas made of the trials' datetimes (none: ns)
                dtype = f"datetime64[{_pandas_datetime_unit() if rows else 'ns'}]"
        elif name in value_cols:
            kind, dtype = "float", "float64"
        else:  # params_, user_attrs_, constraints_: typed by their values
            kind, values = _typed(values)
            dtype = _READER_DTYPE[kind] if kind != "bool" or None not in values else "object"
        columns.append(_column(values, kind, dtype))
        dtypes.append(dtype)
    return pa.Table.from_arrays(columns, names=list(names), metadata={"pandas": _pandas_metadata(list(names), dtypes)})


def _column_group(name: str) -> int:
    """Where a column goes: number, state and values; the parameters (a conditional space's
    later branches too, first seen in a later trial); the fixed columns; user attrs; constraints."""
    if name.startswith("params_"):
        return 1
    if name.startswith("user_attrs_"):
        return 3
    if name.startswith("constraints_"):
        return 4
    return 2 if name in FIXED and name not in ("number", "state") else 0  # else number, state, values


def value_columns(columns: list[str]) -> list[str]:
    """A trials table's value columns, in order (`value`, `values_0`, ..., or named by the
    study's `metric_names`: `value_<name>`, `values_<name>`, ...)."""
    return [c for c in columns if c == "value" or c.startswith(("value_", "values_"))]


def trial_rows(trials: list[FrozenTrial], value_cols: list[str], store: TrialStore | None = None) -> list[dict[str, Any]]:
    """The rows of `trials_table`, as dicts, in the order of `trials`."""
    rows = []
    with_artifacts = store.keys_with_artifacts() if store is not None else set()
    for t in trials:
        attrs = t.system_attrs  # a property: read once (ten lookups a row)
        if attrs.get(NOT_RUN_ATTR) or WARM_START_ATTR in attrs:
            continue
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update(zip(value_cols, t.values if t.values is not None else [None] * len(value_cols)))
        for k, v in t.params.items():
            row[f"params_{k}"] = v
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        # The objective's own time when the worker measured it (a reproducible study applies a
        # result later than it arrives); 0 for a trial answered from the store (no objective
        # ran), none for one the infrastructure cut short (no worker measured it), else
        # Optuna's start-to-complete time (a journal from before the attribute).
        measured, error, cached = attrs.get(DURATION_ATTR), attrs.get(ERROR_ATTR), bool(attrs.get(CACHED_ATTR, False))
        if measured is None:
            measured = 0.0 if cached else None if (error or "").startswith(INFRA_ERRORS) else (
                t.duration.total_seconds() if t.duration is not None else None)
        row["duration_s"] = measured
        row["worker"] = attrs.get(WORKER_ATTR)
        row["error"] = error
        row["attempt"] = int(attrs.get(ATTEMPT_ATTR, 0))
        row["retry_of"] = attrs.get(RETRY_OF_ATTR)
        row["key"] = key = attrs.get(KEY_ATTR)
        row["cached"] = cached
        row["artifacts"] = str(store.artifacts_dir(key)) if key in with_artifacts else None
        for k, v in t.user_attrs.items():
            row[f"user_attrs_{k}"] = v
        row.update({f"constraints_{k.removeprefix(CONSTRAINT_PREFIX)}": v
                    for k, v in attrs.items() if k.startswith(CONSTRAINT_PREFIX)})
        rows.append(row)
    return rows


def _typed(values: list[Any]) -> tuple[str, list[Any]]:
    """A column's kind, and its values made fit for it. Parquet needs one type per column, and
    these follow what pandas made of the same values: ints (without gaps, in int64) stay ints, numbers
    become floats, bools stay bools, and any other mix, or a list or dict, becomes text (JSON
    for lists and dicts)."""
    kinds = {_kind(value_type) for value_type in set(map(type, values)) if value_type is not NoneType}
    if not kinds:
        return "null", values
    if "int" in kinds and kinds <= {"int", "float"}:
        ints = [v for v in values if isinstance(v, numbers.Integral)]
        if not -2**63 <= min(ints) <= max(ints) < 2**63:  # beyond int64 (and a float's 53 bits): exact as text
            return "text", [None if v is None else str(v) for v in values]
    if kinds == {"int"} and None not in values:
        return "int", values
    if kinds <= {"int", "float"}:
        return "float", values
    if len(kinds) == 1 and kinds != {"json"}:
        return kinds.pop(), values
    return "text", [None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v) for v in values]


def _kind(value_type: type) -> str:
    """The column kind of values of this type (a column's types are few: each checked once)."""
    if issubclass(value_type, (bool, np.bool_)):
        return "bool"
    if issubclass(value_type, numbers.Integral):
        return "int"
    if issubclass(value_type, numbers.Real):
        return "float"
    return "json" if issubclass(value_type, (list, dict)) else "text"


def _column(values: list[Any], kind: str, dtype: str) -> pa.Array:
    """An Arrow array of `values` (None: null; NaN: null in a float column, as pandas writes it),
    made from numpy buffers: `pa.array` would import pandas to check what it was given."""
    n = len(values)
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    if kind == "null":
        return pa.nulls(n)
    if kind == "text":
        encoded = [b"" if v is None else str(v).encode() for v in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        buffers = [pa.py_buffer(b"".join(encoded))]
        return _from_buffers(pa.large_string(), valid, pa.py_buffer(offsets), *buffers)
    if kind == "bool":
        bits = np.packbits(np.fromiter((bool(v) for v in values), dtype=bool, count=n), bitorder="little")
        return _from_buffers(pa.bool_(), valid, pa.py_buffer(bits))
    if kind == "float":
        data = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return _from_buffers(pa.float64(), valid & ~np.isnan(data), pa.py_buffer(data))
    if kind == "datetime":
        unit = "ns" if dtype.endswith("[ns]") else "us"
        ticks = _wall_clock_us(values) * (1000 if unit == "ns" else 1)
        return _from_buffers(pa.timestamp(unit), valid, pa.py_buffer(ticks))
    data = np.array([0 if v is None else v for v in values], dtype=np.int64)
    return _from_buffers(pa.int64(), valid, pa.py_buffer(data))


def _wall_clock_us(values: list[Any]) -> np.ndarray:
    """Datetimes as microseconds since 1970-01-01 (None: 0): a naive one (Optuna's) on its own
    clock, as numpy reads it, an aware one in UTC. An exact integer subtraction a trial, 4x
    quicker than numpy's conversion of datetime objects."""
    return np.fromiter((0 if v is None else (_naive(v) - _EPOCH) // _MICROSECOND for v in values),
                       dtype=np.int64, count=len(values))


def _naive(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(timezone.utc).replace(tzinfo=None)


def _from_buffers(kind: pa.DataType, valid: np.ndarray, *buffers: pa.Buffer) -> pa.Array:
    nulls = len(valid) - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(kind, len(valid), [bitmap, *buffers], null_count=nulls)


@functools.cache
def pandas_version() -> str:
    """The installed pandas' version, read from its metadata once (pandas itself not imported)."""
    return version("pandas")


def _pandas_datetime_unit() -> str:
    """The unit pandas gives a column of Python datetimes: microseconds from pandas 3, before
    it nanoseconds."""
    return "us" if int(pandas_version().split(".")[0]) >= 3 else "ns"


def _pandas_metadata(names: list[str], dtypes: list[str]) -> str:
    """pandas' parquet metadata for a table without an index: the `pandas` schema key, as
    pandas' developer guide documents it ("Storing pandas DataFrame objects in Apache Parquet
    format"). Readers take extension dtypes (`string`, `Int64`) from `numpy_type`."""
    return json.dumps({
        "index_columns": [], "column_indexes": [],
        "columns": [{"name": name, "field_name": name, "pandas_type": _PANDAS_TYPE[dtype], "numpy_type": dtype,
                     "metadata": None} for name, dtype in zip(names, dtypes)],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": pandas_version(),
    })


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write `table` as parquet at `path`, atomically."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
