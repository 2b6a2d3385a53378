"""Content hashing shared by config hashes, trial keys and journal names."""

from __future__ import annotations

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
    callable's state, arrays). The same value hashes the same in another process, except where
    it holds a set of strings: a set's order follows string hashing, random per process (the C
    pickler saves sets without asking a reducer, so they cannot be sorted here)."""
    import cloudpickle

    return hashlib.sha256(cloudpickle.dumps(value, protocol=5)).hexdigest()
