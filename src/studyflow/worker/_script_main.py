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

It also gives the script's functions their file back (`_name_code_file`): cloudpickle (3.1)
names it `<dynamic-code>`, so a failed trial's traceback said `File "<dynamic-code>", line 6`
with no source line. That holds for every script, guarded or not, and `python -m` modules.

Adopting the globals is only for a script that calls studyflow under `if __name__ ==
"__main__":`, as Python asks of any script whose processes spawn: an unguarded script's spawned
children would run its whole study again. Such a script, a module run with `python -m`, a notebook, and a worker whose main
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_adopted: set[str] = set()  # names this process set on its `__main__`
_DYNAMIC_CODE = "<dynamic-code>"  # cloudpickle's file name for code it pickled by value


@dataclass(frozen=True)
class Script:
    """Where the objective's `__main__` functions come from, as the driver saw it (`script_of`)."""

    path: str  # `__main__`'s file
    guarded: bool  # a script that called studyflow under its main guard: spawned children may run it


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


def script_of(fn: Any) -> Script | None:
    """In the driver: the file of `__main__`, when `fn` is made of its functions; `guarded`
    when it is a script that called studyflow under its main guard (see the module doc)."""
    main = sys.modules["__main__"]
    main_file = getattr(main, "__file__", None)
    if main_file is None or not any(_script_functions(fn)):
        return None  # a notebook's functions have no file a worker could read
    main_file = os.path.abspath(main_file)
    # `python -m pkg.tune`: its children would import it by name, not path
    return Script(main_file, getattr(main, "__spec__", None) is None and _under_main_guard(main_file))


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


def adopt_script(fn: Any, script: Script | None) -> None:
    """Give the script's functions in `fn` their file, and this worker's `__main__` what they
    brought along (see the module doc)."""
    functions = list(_script_functions(fn))
    if script is None or not functions:
        return
    _name_code_file(functions, script.path)
    main = sys.modules["__main__"]
    if not script.guarded or getattr(main, "__spec__", None) is not None or not os.path.isfile(script.path) or (
            getattr(main, "__file__", None) is not None and "__file__" not in _adopted):
        return  # spawned children could not find what pickling finds here (a `dask-worker`'s main)
    for function in functions:
        for name, value in function.__globals__.items():
            _set(main, name, value)
    for top in (type(fn), *functions):  # a callable instance's class; the script's functions
        if getattr(top, "__module__", None) == "__main__" and "." not in getattr(top, "__qualname__", "."):
            _set(main, top.__qualname__, top)
    main.__file__ = script.path
    _adopted.add("__file__")


def _name_code_file(functions: list[types.FunctionType], path: str) -> None:
    """Set `path` as the file of the script's functions that came by value, of the script's
    functions and classes they use, and of the code nested in them (lambdas, inner functions)."""
    seen: set[int] = set()
    todo: list[Any] = list(functions)
    while todo:
        value = todo.pop()
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, property):
            todo.extend(f for f in (value.fget, value.fset, value.fdel) if f is not None)
            continue
        if id(value) in seen or getattr(value, "__module__", None) != "__main__":
            continue
        seen.add(id(value))
        if isinstance(value, type):
            todo.extend(vars(value).values())
        elif isinstance(value, types.FunctionType):
            if value.__code__.co_filename == _DYNAMIC_CODE:
                value.__code__ = _with_file(value.__code__, path)
            todo.extend(value.__globals__.values())
            todo.extend(cell.cell_contents for cell in value.__closure__ or () if _filled(cell))


def _with_file(code: types.CodeType, path: str) -> types.CodeType:
    consts = tuple(_with_file(c, path) if isinstance(c, types.CodeType) and c.co_filename == _DYNAMIC_CODE else c
                   for c in code.co_consts)
    return code.replace(co_filename=path, co_consts=consts)


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # empty
        return False
    return True
