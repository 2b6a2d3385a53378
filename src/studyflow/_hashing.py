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
