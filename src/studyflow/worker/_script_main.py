"""A script's objective, on a worker, next to the script's own helpers as `__main__` has them.

Plain Optuna runs in the script, so inside the objective `multiprocessing.Pool.map(helper, ...)`,
a `ProcessPoolExecutor` or a spawn DataLoader pickle the script's helpers by reference
(`__main__.helper`), and processes started by spawn or forkserver run the script again as
`__mp_main__` to find them. An objective from a script (or a notebook) reaches a worker by
value instead (cloudpickle), with the globals it uses, while the worker's `__main__` is its
own: pickling such a helper failed ("attribute lookup helper on __main__ failed").

`adopt_script` puts those globals on the worker's `__main__` (the names it set before may be
replaced by the next study's, no other name is touched), and names the script (`script_of`,
in the driver: cloudpickle does not keep where code came from) as that module's file where
it has none, so spawned children run the script as under plain Python (its top-level code
runs in them; `studyflow.optimize` belongs under a main guard there).
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

_adopted: set[str] = set()  # names this process set on its `__main__`


def _script_functions(fn: Any) -> Iterator[types.FunctionType]:
    """The functions of `__main__` that make up `fn`: itself, a partial's function, a bound
    method's, or a callable instance's class methods."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    if isinstance(fn, types.FunctionType):
        if fn.__module__ == "__main__":
            yield fn
        return
    cls = type(fn)
    if cls.__module__ == "__main__":
        yield from (v for v in vars(cls).values() if isinstance(v, types.FunctionType))


def _set(main: types.ModuleType, name: str, value: Any) -> None:
    if name.startswith("__") or (hasattr(main, name) and name not in _adopted):
        return
    setattr(main, name, value)
    _adopted.add(name)


def script_of(fn: Any) -> str | None:
    """In the driver: the script `fn` comes from (`__main__`'s file), if it is one's."""
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    if main_file is None or not any(_script_functions(fn)):
        return None
    return os.path.abspath(main_file)


def adopt_script(fn: Any, script: str | None) -> None:
    """Give this worker's `__main__` what the script's `fn` brought along (see the module doc)."""
    functions = list(_script_functions(fn))
    if not functions:
        return
    main = sys.modules["__main__"]
    for function in functions:
        for name, value in function.__globals__.items():
            _set(main, name, value)
    for top in (fn, type(fn), *functions):
        if getattr(top, "__module__", None) == "__main__" and "." not in getattr(top, "__qualname__", "."):
            _set(main, top.__qualname__, top)
    if script is not None and getattr(main, "__spec__", None) is None and os.path.isfile(script) and (
            getattr(main, "__file__", None) is None or "__file__" in _adopted):
        main.__file__ = script
        _adopted.add("__file__")
