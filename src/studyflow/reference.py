"""A matrix problem's reference: its loader run once on the problem's staged data, the JSON
value written under `<results>/matrix/references/`, which every method's objective receives as
its `reference` argument (`studyflow optimize --reference`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from studyflow._imports import NotImportable
from studyflow._imports import import_named
from studyflow._io import write_json
from studyflow.config import REFERENCE_ARG
from studyflow.worker import add_search_paths
from studyflow.worker import search_paths
from studyflow.errors import DataError


def compute_reference(problem: str, spec: dict[str, Any], data: str | Path | None, out: str | Path) -> Any:
    """Call `spec['loader']` as loader(data_frame, **kwargs) (loader(**kwargs) without data)
    and write its return value as JSON to `out`."""
    where = f"matrix.problems.{problem}.reference.loader"
    add_search_paths(search_paths(None))  # a loader module in the working directory, as objectives
    try:
        loader = import_named(spec["loader"])
    except NotImportable as exc:
        raise DataError(f"{where}: {exc}") from None
    try:
        args = () if data is None else (pd.read_parquet(data),)
        value = loader(*args, **spec.get("kwargs", {}))
    except Exception as exc:
        raise DataError(f"{where}: {spec['loader']} failed: {type(exc).__name__}: {exc}") from exc
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {spec['loader']} returned a value JSON cannot hold: {exc}") from None
    write_json(out, value)
    return value


__all__ = ["REFERENCE_ARG", "compute_reference", "read_reference"]


def read_reference(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
