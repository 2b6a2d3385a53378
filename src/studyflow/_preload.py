"""Imported by the worker forkserver (`_processes.WORKER_MODULES`): imports the modules named
in `STUDYFLOW_PRELOAD` (the study's objective module), so that workers forked from it have them.

A module that fails to import is skipped here: the worker then imports it itself and reports
the error as it always does (a forkserver that died of it would start no worker at all).
"""

import importlib
import os

for _name in filter(None, os.environ.get("STUDYFLOW_PRELOAD", "").split(",")):
    try:
        importlib.import_module(_name)
    except BaseException:  # noqa: BLE001  a user's module may raise anything, even SystemExit
        pass
