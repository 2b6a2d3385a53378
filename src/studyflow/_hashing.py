"""Content hashing shared by config hashes, trial keys and journal names."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from studyflow._json import reused_encoder


_CANONICAL = reused_encoder(sort_keys=True, default=str)


def canonical_json(data: Any) -> str:
    """The same text for the same content: sorted keys, no spaces."""
    return _CANONICAL(data)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pickle_sha256(value: Any) -> str:
    """The sha256 of `value` as cloudpickle ships it to the workers (a closure's values, a
    callable's state, arrays, classes of `__main__`). The same value hashes the same in another
    process, except where it holds a set of strings: a set's order follows string hashing,
    random per process (the C pickler saves sets without asking a reducer, so they cannot be
    sorted here)."""
    digest = _Sha256Writer()
    _stable_pickler()(digest, protocol=5).dump(value)
    return digest.hash.hexdigest()


class _Sha256Writer:
    """A file that hashes what is written to it (a big value is never held as bytes twice)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        """Bytes, or a buffer bigger than a frame, which the pickler hands over as it is (a
        `PickleBuffer` of an array: it has no len)."""
        self.hash.update(data)
        return memoryview(data).nbytes


_HEX = frozenset("0123456789abcdef")


@functools.cache
def _stable_pickler() -> type:
    """cloudpickle's pickler, except that a class it pickles by value (one of `__main__`) is
    named by its module and qualified name instead of the id cloudpickle draws for it once per
    process (`uuid4().hex`, which lets a worker tell two definitions of one name apart): that
    id made every key of such an objective new in each run. Only the hash uses this pickler."""
    import typing

    import cloudpickle

    class StablePickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            reduced = super().reducer_override(obj)
            if isinstance(obj, (type, typing.TypeVar)) and isinstance(reduced, tuple) and len(reduced) > 1 \
                    and isinstance(reduced[1], tuple):
                place = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj.__name__)}"
                args = tuple(place if isinstance(a, str) and len(a) == 32 and _HEX.issuperset(a) else a
                             for a in reduced[1])
                reduced = (reduced[0], args, *reduced[2:])
            return reduced

    return StablePickler
