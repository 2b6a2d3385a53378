"""The first module the workers' forkserver imports (`_processes.WORKER_MODULES`): garbage
collection is off while it imports Dask, numpy, Optuna and the objective's modules, which
allocate a great many long-lived objects and no garbage worth a collection (full collections
of 30 ms and more while they load). `_preload`, the last module, freezes what they made and
turns collection back on before any worker forks, as Python's `gc.freeze` documentation
advises for a parent that forks: the workers' collections then skip those objects, and do
not write to their memory pages (which stay shared with the forkserver's). Dask's settings
are parsed with libyaml meanwhile (`_yaml`); `_preload` puts PyYAML back as it was.
"""

import gc

from studyflow._yaml import use_libyaml

gc.disable()
PLAIN_SAFE_LOAD = use_libyaml()
