"""JSON text for the records the server writes for every trial (journal, store, keys).

`JSONEncoder.encode` builds a new C encoder on every call, about a third of what encoding a
small record costs (benchmarks/RESULTS.md). `reused_encoder` builds one once and reuses it.
Where the C encoder is missing, or does not give `JSONEncoder`'s text for a sample (its
arguments are not a public API), it falls back to `JSONEncoder.encode`. Circular references
are not checked: the records are built from plain values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_SAMPLE = {"b": [1, 2.5, None, True, float("inf"), object()], "a": {"s": 'q"\u00e9\n', "n": -3}}


def reused_encoder(separators: tuple[str, str] = (",", ":"), sort_keys: bool = False,
                   default: Callable[[Any], Any] | None = None) -> Callable[[Any], str]:
    """A function giving `json.dumps(value, separators=..., sort_keys=..., default=...)`."""
    reference = json.JSONEncoder(separators=separators, sort_keys=sort_keys, default=default)
    make = json.encoder.c_make_encoder
    try:
        chunks = make(None, reference.default, json.encoder.encode_basestring_ascii, None,
                      separators[1], separators[0], sort_keys, False, True)
    except TypeError:  # missing (None), or other arguments in this Python
        return reference.encode

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    sample = _SAMPLE if default is not None else {**_SAMPLE, "b": _SAMPLE["b"][:-1]}
    try:
        same = encode(sample) == reference.encode(sample)
    except Exception:
        same = False
    return encode if same else reference.encode
