"""The objective's code identity, hashed into every trial key: the project's own source that
decides a trial's result, and the versions of the libraries the study file names.

Source: the objective's module; when that module is in a package of the project, every `.py`
file of its top-level package (an edit anywhere in it may change a result, and imports built
at run time, `importlib.import_module(f"pkg.models.{name}")`, are covered too); and every
project module reachable from those files by `import` statements (at the top or inside
functions, absolute or relative), found by reading them, not by importing them. A project
module is a `.py` file outside the standard library and site-packages: installed libraries
change by version, which `code.packages` names. studyflow's engine is a library too: its
modules are not followed, except its built-in objectives (`studyflow.objectives`).
An objective that is one module importing no project module keeps the key it had before this
(the hash of its source), so existing stores still answer it.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import linecache
import re
import site
import sys
import sysconfig
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from studyflow._hashing import canonical_json
from studyflow._hashing import pickle_sha256
from studyflow._hashing import sha256_text
from studyflow.errors import StudyflowError

ENGINE = "studyflow"
ENGINE_OBJECTIVES = "studyflow.objectives"


def code_version(fn: Any, explicit: str | None = None, packages: Iterable[str] = ()) -> str:
    """The objective's code version: `objective_version` if given, else its project source
    (see the module docstring); plus the installed versions of `packages` when any are named
    (they count with `objective_version` too: a library's version is not the user's code)."""
    version = f"explicit:{explicit}" if explicit else _source_version(fn)
    versions = package_versions(packages)
    return version if not versions else f"{version}|packages:{canonical_json(versions)}"


def objective_identity(fn: Any) -> str:
    """`module:qualname` of what decides a callable's result: a function, a `functools.partial`'s
    function, a callable instance's class."""
    target = _code_target(fn)
    return f"{getattr(target, '__module__', None)}:{getattr(target, '__qualname__', type(target).__qualname__)}"


def objective_state(fn: Any) -> str | None:
    """A hash of what an objective built at run time carries beyond its source (a closure's
    values, a partial's arguments, an instance's attributes, a `__main__` function's globals):
    its pickle, as cloudpickle ships it to the workers. None for a function its module names
    (its source is all of it; keys made before this stay)."""
    if _found_by_name(fn):
        return None
    try:
        return pickle_sha256(fn)
    except Exception as exc:  # noqa: BLE001  what cannot be pickled cannot reach a worker either
        raise StudyflowError(f"objective {objective_identity(fn)} cannot be pickled to send to the workers: "
                             f"{type(exc).__name__}: {exc}") from None


def _code_target(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.ismethod(fn):
        return fn.__func__
    return fn if inspect.isfunction(fn) or inspect.isbuiltin(fn) else type(fn)


def _found_by_name(fn: Any) -> bool:
    """A plain function without a closure that its module, not `__main__`, holds by its name."""
    if not inspect.isfunction(fn) or fn.__closure__ or fn.__module__ in (None, "__main__"):
        return False
    found: Any = sys.modules.get(fn.__module__)
    for part in fn.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is fn


def objective_code_version(objective: str, explicit: str | None = None, packages: Iterable[str] = ()) -> str | None:
    """`code_version` of the objective named `module:function`, read from its source files
    without importing it (the driver of a local cluster leaves that to the workers); None when
    its module has no source file to read (import it and ask `code_version`)."""
    version = f"explicit:{explicit}" if explicit else _module_version(objective.partition(":")[0])
    if version is None:
        return None
    versions = package_versions(packages)
    return version if not versions else f"{version}|packages:{canonical_json(versions)}"


def source_fingerprint(objective: str, search_paths: Iterable[str], library: str | None = None) -> str:
    """A hash of the objective's project source (the files `code_version` would hash), found
    on `search_paths` without importing anything: what the workflow writes beside a study's
    config hash, so that editing the objective's code re-runs its `optimize` job. With
    `library`, that is the answer for a module that is not the project's (none read)."""
    module = objective.partition(":")[0]
    saved = list(sys.path)
    sys.path[:0] = [p for p in search_paths if p not in sys.path]
    try:
        root = _source_file(sys.modules.get(module)) or _find_source(module)
        if library is not None and (root is None or not _is_project(root)):
            return library
        files = _project_files(module, root) if root is not None else {}
    finally:
        sys.path[:] = saved
    return sha256_text(canonical_json(files)) if files else "not found"


def missing_module(name: str, search_paths: Iterable[str]) -> str | None:
    """The first part of dotted module `name` that neither `search_paths` nor the installed
    packages hold, found without importing anything: so a misspelt objective fails the
    workflow's dry run. None when found, and when unknowable without an import: the parts of a
    package that lies outside the search paths (an installed one may add submodules as it loads)."""
    parts = name.split(".")
    saved = list(sys.path)
    sys.path[:0] = [p for p in search_paths if p not in sys.path]
    try:
        spec = importlib.util.find_spec(parts[0]) if parts[0] not in sys.modules else None
        if spec is None:
            return None if parts[0] in sys.modules else parts[0]
        locations = list(spec.submodule_search_locations or [])
        project = [Path(p).resolve() for p in search_paths]
        where = locations or ([spec.origin] if spec.origin else [])
        if not any(Path(w).resolve().is_relative_to(root) for w in where for root in project):
            return None
        for i in range(1, len(parts)):
            sub = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), locations)
            if sub is None:
                return ".".join(parts[: i + 1])
            locations = list(sub.submodule_search_locations or [])
        return None
    finally:
        sys.path[:] = saved


def loader_fingerprint(loader: str, search_paths: Iterable[str]) -> str:
    """`source_fingerprint` of a dataset's or a matrix reference's `loader` (`module:function`)
    that is the project's code, so that editing it re-stages its data; "library" for one
    installed (a library changes by version; its files are not read on every workflow load)."""
    return source_fingerprint(loader, search_paths, library="library")


def strategy_fingerprint(sampler: str, pruner: str, search_paths: Iterable[str]) -> dict[str, str]:
    """`loader_fingerprint` of a study's sampler and pruner named as 'module:Class' (a user's
    own method): it joins the study's journal name and the workflow's config hash file, so that
    editing that code runs the study again with it. {} for Optuna's by their short names."""
    return {section: loader_fingerprint(name, search_paths)
            for section, name in (("sampler", sampler), ("pruner", pruner)) if ":" in name}


def canonical_name(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): `Scikit_Learn` is `scikit-learn`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """{name: installed version} read with importlib.metadata in this process's environment."""
    versions: dict[str, str] = {}
    for name in packages:
        try:
            versions[canonical_name(name)] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise StudyflowError(f"code.packages: {name!r} is not an installed distribution") from None
    return versions


def _source_version(fn: Any) -> str:
    fn = _code_target(fn)
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    version = _module_version(module.__name__, module) if module is not None else None
    return version if version is not None else _single_source(module, fn)


def _module_version(name: str, module: Any = None) -> str | None:
    """The source version of module `name` from its files, imported or not; None without a
    source file. One module importing no project module keeps the key it always had: the hash
    of its text as `inspect.getsource` reads it (through linecache, as read here)."""
    module = module if module is not None else sys.modules.get(name)
    root = _source_file(module) if module is not None else _find_source(name)
    if root is None:
        return None
    files = _project_files(name, root)
    if len(files) > 1:
        return "source:" + sha256_text(canonical_json(files))
    linecache.checkcache(str(root))
    text = "".join(linecache.getlines(str(root)))
    return "source:" + sha256_text(text) if text else None


def _single_source(module: Any, fn: Any) -> str:
    for target in (module, fn):
        if target is None:
            continue
        try:
            return "source:" + sha256_text(inspect.getsource(target))
        except (OSError, TypeError):
            continue
    return "unversioned:" + getattr(fn, "__qualname__", repr(fn))


def _project_files(name: str, root: Path) -> dict[str, str]:
    """{module name: sha256 of its file} for the objective's module `name` (file `root`), its
    top-level package when that is the project's, and the project modules they import."""
    found: dict[str, Path] = {name: root}
    top = name.partition(".")[0]
    if "." in name and top != ENGINE:
        for location in _package_locations(top):
            for path in sorted(location.rglob("*.py")):
                rel = path.relative_to(location).with_suffix("").parts
                if any(part.startswith(".") or part == "__pycache__" for part in rel):
                    continue
                parts = rel[:-1] if rel[-1] == "__init__" else rel
                found.setdefault(".".join((top, *parts)), path)
    todo = list(found.items())
    while todo:
        module, path = todo.pop()
        for imported in _imports(module, path):
            if imported in found or not _followed(imported):
                continue
            file = _source_file(sys.modules.get(imported)) or _find_source(imported)
            if file is not None and _is_project(file):
                found[imported] = file
                todo.append((imported, file))
    return {module: hashlib.sha256(path.read_bytes()).hexdigest() for module, path in found.items()}


def _followed(module: str) -> bool:
    """studyflow's engine is a library, not the objective's code; its objectives are code."""
    return module.partition(".")[0] != ENGINE or f"{module}.".startswith(f"{ENGINE_OBJECTIVES}.")


# CPython 3.11's AST constructor is not thread-safe: two drivers started together in one
# process (threads) parsing at once failed with "SystemError: AST constructor recursion depth
# mismatch". Parsing is a small part of hashing the code: one at a time. Another thread's
# `ast.parse` (a library's, while the cluster starts) can still meet ours: tried again then.
_PARSE_LOCK = threading.Lock()
_PARSE_TRIES = 3


def _parsed(source: bytes, path: Path) -> ast.Module:
    for _ in range(_PARSE_TRIES - 1):  # "AST constructor recursion depth mismatch": again
        with contextlib.suppress(SystemError), _PARSE_LOCK:
            return ast.parse(source, filename=str(path))
    with _PARSE_LOCK:
        return ast.parse(source, filename=str(path))


def _imports(module: str, path: Path) -> set[str]:
    """Every module an `import` in the file names, with the packages above it (importing
    `a.b.c` runs `a` and `a.b` first); relative imports resolved against `module`'s package."""
    source = path.read_bytes()
    try:
        tree = _parsed(source, path)
    except (SyntaxError, ValueError):
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([base] if base else [])])
            if base:
                names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names if alias.name != "*")
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def _import_nodes(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements anywhere in the module's statements (inside functions, classes,
    `if`, `try`...), without visiting expressions, which `ast.walk` would (costs: RESULTS.md)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, block, None)
            if isinstance(children, list):
                stack.extend(children)
    return found


def _find_source(name: str) -> Path | None:
    """The `.py` file of module `name` on sys.path, found without importing anything; None
    for a name that is not a module (`from pkg import function`) or not a source file."""
    parts = name.split(".")
    locations: list[str] | None = None  # sys.path for the top-level name
    spec = None
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), locations)
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
        if i < len(parts) - 1 and not locations:
            return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _source_file(module: Any) -> Path | None:
    file = getattr(module, "__file__", None)
    if not file or not str(file).endswith(".py") or not Path(file).is_file():
        return None
    return Path(file)


def _package_locations(top: str) -> list[Path]:
    """The folders of top-level package `top` if it is the project's (not an installed one)."""
    module = sys.modules.get(top)
    paths = list(getattr(module, "__path__", None) or [])
    if not paths:
        spec = importlib.machinery.PathFinder.find_spec(top)
        paths = list(spec.submodule_search_locations or []) if spec is not None else []
    return [Path(p) for p in paths if Path(p).is_dir() and _is_project(Path(p) / "__init__.py")]


def _library_roots() -> tuple[Path, ...]:
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})[key]
                 for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    roots.update(getattr(site, "getsitepackages", lambda: [])())
    roots.add(site.getusersitepackages())
    return tuple(Path(r).resolve() for r in roots if r)


_LIBRARY_ROOTS: tuple[Path, ...] | None = None


def _is_project(path: Path) -> bool:
    """True for the project's own source: not the standard library, not site-packages."""
    global _LIBRARY_ROOTS
    if _LIBRARY_ROOTS is None:
        _LIBRARY_ROOTS = _library_roots()
    resolved = path.resolve()
    if {"site-packages", "dist-packages"} & set(resolved.parts):
        return False
    return not any(resolved.is_relative_to(root) for root in _LIBRARY_ROOTS)
