"""Stage a dataset: read it once, write `<name>.parquet` and a manifest (sha256, rows, schema,
and what it was read from, so that `studyflow run` stages it again once that changed)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from studyflow._imports import NotImportable
from studyflow._imports import import_named
from studyflow._io import atomic_write
from studyflow._io import write_json
from studyflow.config import DatasetSpec
from studyflow.config import dataset_parts
from studyflow.errors import DataError
from studyflow.store._code import loader_fingerprint

_logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # imported where a table is read: the driver needs only the manifest helpers
    import pandas as pd


@dataclass
class Manifest:
    dataset: str
    path: str
    sha256: str
    rows: int
    columns: dict[str, str]  # {column: dtype}
    source: dict[str, Any]
    source_state: dict[str, Any]  # `source_state(spec)` as staging found it


def source_state(spec: DatasetSpec) -> dict[str, Any]:
    """What a dataset is read from, as it is now: each file's size and mtime (a folder's files,
    as `dataset_parts` lists them), or a loader's project source fingerprint ("library" for an
    installed one). Staging again is due once this differs, as Snakemake's stage rule reruns
    when one of its inputs is newer than its output."""
    if spec.path is None:
        return {"loader_code": loader_fingerprint(spec.loader or "", [str(Path.cwd())])}
    files = dataset_parts(spec.path) or [spec.path]
    stats = {f: os.stat(f) for f in files if os.path.exists(f)}
    return {"files": {f: [st.st_size, st.st_mtime_ns] for f, st in stats.items()}}


def why_stage(name: str, spec: DatasetSpec, staged: Path) -> str | None:
    """Why the dataset `name` must be staged (again) at `staged`, or None when the staged
    table was read from `spec` as it is now."""
    if not staged.is_file() or not manifest_path(staged).is_file():
        return "not staged yet"
    manifest = read_manifest(staged)
    if manifest.get("source") != asdict(spec):
        return f"datasets.{name} changed since it was staged"
    if manifest.get("source_state") != source_state(spec):
        return f"{spec.path or spec.loader} changed since it was staged"
    return None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_source(name: str, spec: DatasetSpec) -> pd.DataFrame:
    """Read a dataset from its file (csv/parquet/json), its folder of parquet files (a
    partitioned dataset), or its loader ('module:function')."""
    import pandas as pd

    if spec.path is not None:
        path = Path(spec.path)
        if not path.exists():
            raise DataError(f"datasets.{name}.path: data file {path} not found")
        try:
            if path.suffix == ".parquet" or path.is_dir():
                return pd.read_parquet(path)
            if path.suffix in (".json", ".jsonl"):
                return pd.read_json(path, lines=path.suffix == ".jsonl")
            return pd.read_csv(path)
        except Exception as exc:
            raise DataError(f"datasets.{name}.path: cannot read {path}: {type(exc).__name__}: {exc}")
    if str(Path.cwd()) not in sys.path:  # a loader module in the working directory, as objectives
        sys.path.insert(0, str(Path.cwd()))
    try:
        loader = import_named(spec.loader or "")
    except NotImportable as exc:
        raise DataError(f"datasets.{name}.loader: {exc}") from None
    try:
        frame = loader(**spec.kwargs)
    except Exception as exc:
        raise DataError(
            f"datasets.{name}.loader: {spec.loader} failed: {type(exc).__name__}: {exc}"
        ) from exc
    table = getattr(frame, "frame", frame)  # scikit-learn's Bunch(as_frame=True)
    if table is None and frame is not None:  # its Bunch without as_frame: arrays, and frame None
        raise DataError(f"datasets.{name}.loader: {spec.loader} returned a {type(frame).__name__} without a "
                        "table (its frame is None): set kwargs: {as_frame: true}")
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"datasets.{name}.loader: {spec.loader} returned {type(table).__name__}, not a DataFrame")
    return table


def stage_if_due(name: str, spec: DatasetSpec, staged: Path) -> None:
    """Stage the dataset `name` at `staged` (`studyflow run`) when `why_stage` says so."""
    why = why_stage(name, spec, staged)
    if why is not None:
        _logger.info("staging dataset %s: %s", name, why)
        stage(name, spec, staged.parent)


def stage(name: str, spec: DatasetSpec, out_dir: str | Path) -> Manifest:
    state = source_state(spec)  # before reading: an edit meanwhile stages again next time
    frame = read_source(name, spec)
    if frame.empty:
        raise DataError(f"datasets.{name}: the dataset has no rows")
    frame.columns = [str(c) for c in frame.columns]
    out = Path(out_dir) / f"{name}.parquet"
    atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
    manifest = Manifest(
        dataset=name,
        path=str(out),
        sha256=sha256_file(out),
        rows=len(frame),
        columns={c: str(t) for c, t in frame.dtypes.items()},
        source=asdict(spec),
        source_state=state,
    )
    write_json(manifest_path(out), asdict(manifest))
    return manifest


def manifest_path(parquet: str | Path) -> Path:
    parquet = Path(parquet)
    return parquet.with_name(parquet.stem + ".manifest.json")


def read_manifest(parquet: str | Path) -> dict[str, Any]:
    path = manifest_path(parquet)
    if not path.is_file():
        raise DataError(f"{path}: manifest of staged data not found (run the stage rule)")
    return json.loads(path.read_text())
