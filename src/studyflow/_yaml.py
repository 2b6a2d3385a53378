"""dask and distributed parse their default settings (two YAML files) when first imported,
with PyYAML's pure-Python `safe_load`, in every process that imports them, on the path of a
command's start (the driver's imports, the workers' forkserver's). `libyaml_safe_load` has
`safe_load` parse with libyaml's C parser (`CSafeLoader`: the same safe constructors, a tenth
of the time, benchmarks/RESULTS.md) while they are imported; where PyYAML was built without
libyaml it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def use_libyaml() -> Any:
    """Make `yaml.safe_load` parse with libyaml; returns what `restore` needs (None: unchanged)."""
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return None
    plain = yaml.safe_load
    yaml.safe_load = lambda stream: yaml.load(stream, Loader=yaml.CSafeLoader)
    return plain


def restore(plain: Any) -> None:
    """Put back the `yaml.safe_load` that `use_libyaml` replaced."""
    if plain is not None:
        import yaml

        yaml.safe_load = plain


@contextmanager
def libyaml_safe_load() -> Iterator[None]:
    plain = use_libyaml()
    try:
        yield
    finally:
        restore(plain)
