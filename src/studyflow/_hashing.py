"""Content hashing shared by config hashes, trial keys and journal names."""

from __future__ import annotations

import hashlib
import json
from typing import Any


# one encoder for every call: `json.dumps` with options builds a new one each time
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def canonical_json(data: Any) -> str:
    """The same text for the same content: sorted keys, no spaces."""
    return _CANONICAL.encode(data)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
