"""How the studies open on one cluster share its worker slots.

Each study wants its concurrency (or every slot, if it sets none). The slots are split by
water-filling: a study that wants less than an even split gets what it wants, and what it
leaves goes evenly to the others. A study that closes frees its share for the rest. A study
over its share is leased nothing new on the loops beyond it, which stop once they hold nothing.
"""

from __future__ import annotations

from collections.abc import Callable


def water_fill(slots: int, wants: dict[str, int]) -> dict[str, int]:
    """Each study's share of `slots` (at least one each, so every open study makes progress)."""
    shares: dict[str, int] = {}
    left = slots
    ordered = sorted(wants.items(), key=lambda item: item[1])
    for i, (study, want) in enumerate(ordered):
        share = max(1, min(want, left // (len(ordered) - i)))
        shares[study] = share
        left -= share
    return shares


def loop_share(loop: str, quota: int | None, running: set[str], held: Callable[[str], int]) -> str:
    """Whether a study's `loop` runs on: 'in' within the study's `quota` of the cluster (None:
    no other study open); beyond it, 'drain' while it holds trials (leased nothing new, it ends
    as they do, whatever its prefetch), then 'stop'. Of the study's `running` loops, those
    holding trials, then by id, keep the share, so the same ones drain."""
    if quota is None or len(running) <= quota:
        return "in"
    if loop in sorted(running, key=lambda other: (held(other) == 0, other))[:quota]:
        return "in"
    return "drain" if held(loop) else "stop"
