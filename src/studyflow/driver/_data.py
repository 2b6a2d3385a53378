"""The data a study's trial loops get: a DataFrame, a parquet file, or the study's staged
dataset, checked for the columns the objective needs and fingerprinted for the trial keys.
pandas and pyarrow are imported only where a table is given or read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from studyflow._hashing import canonical_json
from studyflow._hashing import pickle_sha256
from studyflow._hashing import sha256_text
from studyflow.config import StudyConfig
from studyflow.config import dataset_parts
from studyflow.errors import ConfigError
from studyflow.errors import DataError
from studyflow.stage import read_manifest
from studyflow.stage import sha256_file

if TYPE_CHECKING:
    import pandas as pd


def resolve_data(cfg: StudyConfig, data: pd.DataFrame | str | Path | None, staged: Path) -> tuple[Any, str | None]:
    """The data argument for the trial loops, and its sha256: `data` as given (a DataFrame, a
    parquet file, or any other picklable value, e.g. arrays `(X, y)`), else the study's dataset
    as staged at `staged`. A folder of parquet files (a partitioned dataset) is read here, as
    `pd.read_parquet` reads it, and goes on as that DataFrame."""
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = _read_folder(Path(data))
    if is_frame(data):
        import pandas as pd

        _check_columns(cfg, list(data.columns), "the DataFrame given as data")
        rows = pd.util.hash_pandas_object(data, index=True).to_numpy().tobytes()
        return data, sha256_text(canonical_json(list(map(str, data.columns))) + rows.hex())
    if data is not None and not isinstance(data, (str, os.PathLike)):  # arrays, a tuple (X, y), ...
        if cfg.data_columns:
            raise ConfigError(cfg.source or "<study>", "data_columns",
                              f"checks a DataFrame's columns, but data is a {type(data).__name__}")
        return data, _pickle_sha(data)
    if data is None and cfg.data is None:
        if cfg.data_columns:
            raise ConfigError(cfg.source or "<study>", "data_columns", "set, but the study has no data")
        return None, None
    path = Path(data) if data is not None else staged
    if not path.is_file():
        what = "data file" if data is not None else f"staged data for dataset {cfg.data!r}"
        raise DataError(f"{path}: {what} not found" + ("" if data is not None else " (run the stage rule)"))
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file: {type(exc).__name__}: {exc}") from exc
    _check_columns(cfg, columns, str(path))
    sha = read_manifest(path)["sha256"] if data is None else sha256_file(path)
    return str(path.resolve()), sha


def _read_folder(folder: Path) -> pd.DataFrame:
    import pandas as pd

    if not dataset_parts(str(folder)):
        raise DataError(f"{folder}: a folder without data files (a partitioned dataset's parquet files)")
    try:
        return pd.read_parquet(folder)
    except Exception as exc:
        raise DataError(f"{folder}: not a readable folder of parquet files: {type(exc).__name__}: {exc}") from exc


def _pickle_sha(data: Any) -> str:
    """The sha256 of `data` as cloudpickle ships it to the workers: its content, for the keys."""
    try:
        return pickle_sha256(data)
    except Exception as exc:  # noqa: BLE001  what cannot be pickled cannot reach a worker either
        raise DataError(f"data: a {type(data).__name__} that cannot be pickled to send to the workers: "
                        f"{type(exc).__name__}: {exc}") from None


def is_frame(data: Any) -> bool:
    """Whether `data` is a pandas DataFrame. No data or a path answers without pandas; anything
    else imports it, which waits for an import under way on another thread (the driver's table
    thread) instead of reading a half-imported module from `sys.modules`."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return False
    import pandas as pd

    return isinstance(data, pd.DataFrame)


def _check_columns(cfg: StudyConfig, columns: list[str], where: str) -> None:
    missing = [c for c in cfg.data_columns if c not in columns]
    if missing:
        raise ConfigError(
            cfg.source or "<study>", "data_columns",
            f"{where} lacks column(s) {missing} that the objective needs (it has {columns[:20]})",
        )
