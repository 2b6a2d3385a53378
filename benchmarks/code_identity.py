"""What the objective's code identity (`studyflow.store.code_version`) costs the driver, once
per study, in CPU time (the machine may be shared): a synthetic project package of N modules (about 3 KB each, two imports inside a
function, numpy and pandas at the top), the objective in it, against the shipped objective.
Also the same identity found with `ast.walk` over every node instead of the statements only.

    python benchmarks/code_identity.py [--modules 50 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from studyflow.store import _code
from studyflow.store import code_version


def make_package(root: Path, name: str, n: int) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    body = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(100))
    for i in range(n):
        sub = pkg / f"sub{i // 20}"
        sub.mkdir(exist_ok=True)
        (sub / "__init__.py").write_text("")
        nxt = (i + 1) % n
        (sub / f"m{i}.py").write_text(
            "import numpy\nimport pandas\n\n\ndef g():\n"
            f"    from {name}.sub{nxt // 20} import m{nxt}\n    from . import m{i}\n\n\n" + body)
    (pkg / "objective.py").write_text(
        f"import pandas\nfrom {name}.sub0 import m0\n\n\ndef objective(trial):\n    return 0.0\n")


def timed(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        runs.append(time.process_time() - start)
    return statistics.median(runs) * 1000


def walk_all(tree: ast.Module) -> list:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modules", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from studyflow.objectives.hgb import objective as hgb

    print("| objective | project files hashed | statements walked (CPU ms) | every node walked (CPU ms) |")
    print("| --- | --- | --- | --- |")
    statements = _code._import_nodes
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        cases = [("studyflow.objectives.hgb (shipped)", hgb)]
        for n in args.modules:
            make_package(Path(tmp), f"bench_pkg_{n}", n)
            cases.append((f"package of {n} modules", importlib.import_module(f"bench_pkg_{n}.objective").objective))
        for label, fn in cases:
            module = sys.modules[fn.__module__]
            files = len(_code._project_files(module.__name__, Path(module.__file__)))
            _code._import_nodes = statements
            fast = timed(lambda: code_version(fn), args.repeats)
            _code._import_nodes = walk_all
            slow = timed(lambda: code_version(fn), args.repeats)
            _code._import_nodes = statements
            print(f"| {label} | {files} | {fast:.1f} | {slow:.1f} |")


if __name__ == "__main__":
    main()
