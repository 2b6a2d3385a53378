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
it has none, so spawned children run the script as under plain Python.

Only for a script that calls studyflow under `if __name__ == "__main__":`, as Python asks of
any script whose processes spawn: an unguarded script's spawned children would run its whole
study again. Such a script, a module run with `python -m`, a notebook, and a worker whose main
is a module (`dask-worker`, SLURM's jobs) keep the worker's `__main__` as it is: pickling then
finds no helper that a spawned child could not find (`Pool.map` would wait forever for it).
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
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
    if name.startswith("__") or not name.isidentifier() or (hasattr(main, name) and name not in _adopted):
        return
    setattr(main, name, value)
    _adopted.add(name)


def script_of(fn: Any) -> str | None:
    """In the driver: the script `fn` comes from (`__main__`'s file), when it is one's and the
    script called studyflow under its main guard (see the module doc)."""
    main = sys.modules["__main__"]
    main_file = getattr(main, "__file__", None)
    if main_file is None or getattr(main, "__spec__", None) is not None or not any(_script_functions(fn)):
        return None  # (`python -m pkg.tune`: its children would import it by name, not path)
    main_file = os.path.abspath(main_file)
    return main_file if _under_main_guard(main_file) else None


def _under_main_guard(main_file: str) -> bool:
    """Whether the script's module-level code runs inside `if __name__ == "__main__":` now."""
    main_globals = vars(sys.modules["__main__"])
    frame = inspect.currentframe()
    while frame is not None and not (frame.f_globals is main_globals and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return False
    line = frame.f_lineno
    try:
        tree = ast.parse(Path(main_file).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.If) and _is_main_test(node.test)
               and node.body[0].lineno <= line <= (node.body[-1].end_lineno or 0) for node in ast.walk(tree))


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(a, ast.Name) and a.id == "__name__" for a in sides) and any(
        isinstance(b, ast.Constant) and b.value == "__main__" for b in sides)


def adopt_script(fn: Any, script: str | None) -> None:
    """Give this worker's `__main__` what the script's `fn` brought along (see the module doc)."""
    functions = list(_script_functions(fn))
    main = sys.modules["__main__"]
    if script is None or not functions or getattr(main, "__spec__", None) is not None or not os.path.isfile(script) or (
            getattr(main, "__file__", None) is not None and "__file__" not in _adopted):
        return  # spawned children could not find what pickling finds here (a `dask-worker`'s main)
    for function in functions:
        for name, value in function.__globals__.items():
            _set(main, name, value)
    for top in (type(fn), *functions):  # a callable instance's class; the script's functions
        if getattr(top, "__module__", None) == "__main__" and "." not in getattr(top, "__qualname__", "."):
            _set(main, top.__qualname__, top)
    main.__file__ = script
    _adopted.add("__file__")
