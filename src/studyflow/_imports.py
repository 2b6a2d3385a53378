"""What a study or workflow file names as 'module:attr': an objective, a dataset's or a matrix
reference's loader, a sampler or pruner class. One way to import it (`attr` may be dotted,
e.g. 'pkg.data:Prices.load'), and one line saying what is missing, which each caller puts
under the key that named it."""

from __future__ import annotations

import importlib
from typing import Any


class NotImportable(LookupError):
    """The module cannot be imported, or lacks the attribute; the message is one line."""


def import_named(path: str) -> Any:
    """The object `path` ('module:attr') names, imported from `sys.path`."""
    module_name, _, attr = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001  a missing module, or one whose import fails
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise NotImportable(f"cannot import module {module_name!r}: {type(exc).__name__}: {first_line}") from None
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise NotImportable(f"module {module_name!r} has no {attr!r}")
    return found
