"""The values a trial loop was given through the study server (`protocol.Held`): the objective
and data handed to `optimize()` as values, e.g. a notebook's closure over its training data.

A worker process fetches them from the server once for all its loops of a study, and lets go
of them when its last loop of that study ends (a standing cluster's workers outlive studies).
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from studyflow.protocol import Held
from studyflow.worker._trial import ServerConnection

_lock = threading.Lock()  # loops of one process start on several threads
_held: dict[str, tuple[dict[str, Any], int]] = {}  # study id -> (values, loops using them)


@contextmanager
def held_values(conn: ServerConnection, *args: Any) -> Iterator[list[Any]]:
    """`args` with each `Held` replaced by the value the server holds for it."""
    if not any(isinstance(arg, Held) for arg in args):
        yield list(args)
        return
    study_id = conn.study_id
    with _lock:
        values, users = _held.get(study_id) or (pickle.loads(conn.call("held")["held"]), 0)
        _held[study_id] = (values, users + 1)
    try:
        yield [values[arg.name] if isinstance(arg, Held) else arg for arg in args]
    finally:
        with _lock:
            values, users = _held[study_id]
            if users == 1:
                del _held[study_id]
            else:
                _held[study_id] = (values, users - 1)
