"""The study server's word that a study stopped, pushed to the workers running its loops.

A loop hears of a stop in the reply to its next exchange; a loop holding its next trial
(random search holds them, to hide the round trip) would begin that trial first, after the
stop. The server sends `studyflow_stop` on each such worker's stream from the scheduler (the
one Dask uses to send it tasks), and this process's loops of that study start nothing more:
their running trials finish, the trials they hold go back (Optuna's `Study.stop()`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from studyflow.protocol import STOP_OP

_lock = threading.Lock()
_listeners: dict[str, list[Callable[[], None]]] = {}  # study id -> this process's loops' callbacks


@contextmanager
def stop_heard_by(worker: Any, study_id: str, on_stop: Callable[[], None]) -> Iterator[None]:
    """While in this block, `on_stop` runs (on the worker's event loop) when the server pushes
    a stop of `study_id` to this worker."""
    with _lock:
        worker.stream_handlers.setdefault(STOP_OP, _stop_pushed)
        _listeners.setdefault(study_id, []).append(on_stop)
    try:
        yield
    finally:
        with _lock:
            listeners = _listeners.get(study_id, [])
            if on_stop in listeners:
                listeners.remove(on_stop)
            if not listeners:
                _listeners.pop(study_id, None)


def _stop_pushed(study_id: str = "", **_: Any) -> None:
    with _lock:
        listeners = list(_listeners.get(study_id, ()))
    for on_stop in listeners:
        on_stop()
