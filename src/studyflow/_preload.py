"""Imported by the worker forkserver (`_processes.WORKER_MODULES`): imports the modules named
in `STUDYFLOW_PRELOAD` (the study's objective module), so that workers forked from it have them.

A module that fails to import is skipped here: the worker then imports it itself and reports
the error as it always does (a forkserver that died of it would start no worker at all).

The forkserver ends when the process that started it does. Its interpreter's teardown, with
Dask, Optuna and numpy loaded, took ~0.25 s of CPU, holding the command's stdout and stderr
open all along (a pipe's reader waited for it); it ends at once instead, after the atexit
handlers of the objective's modules (registered after ours, so run before it). Workers fork
from it but never run atexit handlers: a forked child ends in `os._exit`.
"""

import atexit
import gc
import importlib
import os
import sys
import warnings

from studyflow import _preload_begin
from studyflow._compat import build_tls_defaults
from studyflow._yaml import restore
from studyflow.worker._interrupt import note_interrupts

# Under `python -m studyflow.cli`, each forked worker runs that module again as its
# `__mp_main__` (multiprocessing does, for a `-m` main), and runpy warns that it is imported
# already: it is, on purpose, by this forkserver (`_processes.WORKER_MODULES`). Workers inherit
# this filter; the warning said nothing a user can act on.
warnings.filterwarnings("ignore", message="'studyflow.cli' found in sys.modules", category=RuntimeWarning)


def _end_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


atexit.register(_end_now)

# A terminal's Ctrl-C ends no worker: each notes it (`worker._interrupt`; the forkserver hands
# its children the SIGINT handler it had before its own loop began: this one).
note_interrupts()

# Each worker accepts TLS connections; forked from here, it inherits tornado's default context
# built once. On Linux only: elsewhere loading the CA store may start threads, unsafe to fork.
if sys.platform.startswith("linux"):
    build_tls_defaults()

for _name in filter(None, os.environ.get("STUDYFLOW_PRELOAD", "").split(",")):
    try:
        importlib.import_module(_name)
    except BaseException:  # noqa: BLE001  a user's module may raise anything, even SystemExit
        pass

# Collection was off for the imports (`_preload_begin`): what they made is kept out of every
# collection from now on, here and in the workers forked from here, which collect as usual.
gc.freeze()
gc.enable()
restore(_preload_begin.PLAIN_SAFE_LOAD)  # Dask's settings are parsed: PyYAML as it was
