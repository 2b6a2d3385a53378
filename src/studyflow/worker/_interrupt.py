"""A terminal's Ctrl-C reaches the local workers too, and ends no worker.

Ctrl-C sends SIGINT to the whole foreground process group: the driver, which stops the study
(its running trials are re-run by the next run), and each local worker. A worker died of the
KeyboardInterrupt, at times before the driver's stop reached the study server, which then
failed its trial as `WorkerLost`: one of `budget.retries` spent, and with `retries: 0` its
parameters never ran again. Workers note the signal instead (`note_interrupt`, installed in
the forkserver the workers are forked from: a handler, not SIG_IGN, which a program a trial
runs would inherit through exec and run on past the stop). A trial running when it came ends
as INTERRUPTED (the programs it waited for got the signal too): re-run with its parameters,
not counted as an attempt, as the driver's stop does with the trials it finds running.
"""

from __future__ import annotations

import signal
import time

_last_interrupt: float | None = None  # time.monotonic() of the last SIGINT


def note_interrupt(signum: int, frame: object) -> None:
    global _last_interrupt
    _last_interrupt = time.monotonic()


def interrupted_since(moment: float) -> bool:
    """Whether a SIGINT came at or after `moment` (a time.monotonic())."""
    return _last_interrupt is not None and _last_interrupt >= moment


def note_interrupts() -> None:
    signal.signal(signal.SIGINT, note_interrupt)
