"""How the studies open on one cluster share its worker slots.

Each study wants its concurrency (or every slot, if it sets none). The slots are split by
water-filling: a study that wants less than an even split gets what it wants, and what it
leaves goes evenly to the others. A study that closes frees its share for the rest.
"""

from __future__ import annotations


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
