"""A run's TLS settings (`driver._security.run_credentials`), with each TLS context built once
per process.

distributed's `Security` builds a new `SSLContext` for every listener and connection, and for
certificates held in memory (a run's) writes them to a temporary folder first: 1-4 ms each, 11
connections and 9 listeners in the driver of an 8-worker local run (~35 ms of its start). A
context serves any number of connections, so each (direction, role) keeps its first one. Kept
contexts are not pickled: each worker process builds its own. A module of its own, outside
`driver`, because worker processes import it to unpickle the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distributed.security import Security


class RunSecurity(Security):
    def get_connection_args(self, role: str) -> dict[str, Any]:
        return self._kept(("connect", role), super().get_connection_args)

    def get_listen_args(self, role: str) -> dict[str, Any]:
        return self._kept(("listen", role), super().get_listen_args)

    def _kept(self, key: tuple[str, str], build: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        kept = self.__dict__.setdefault("_contexts", {})
        if key not in kept:
            kept[key] = build(key[1])
        return dict(kept[key])  # the caller's own dict around the shared context

    def __getstate__(self) -> Any:
        # the settings without the contexts: (own attributes, the parent's slots) while
        # `Security` has slots, else one dict
        state = super().__getstate__()
        if isinstance(state, tuple):
            own, slots = state
            return {k: v for k, v in (own or {}).items() if k != "_contexts"} or None, slots
        return {k: v for k, v in (state or {}).items() if k != "_contexts"}
