"""How many trials a loop may hold beyond the one it runs: the study's prefetch policy.

The policy travels to each loop with every reply; the loop picks within it from its own
measurements of trial and round-trip times (`worker._loop.Pace`).
"""

from __future__ import annotations

from typing import Any

from studyflow.config import StudyConfig
from studyflow.optuna_ext import HISTORY_FREE_SAMPLERS

# `prefetch: auto` lets a loop hold this many trials beyond the one it runs when the sampler
# ignores history (random, grid, qmc): short trials then cost one round trip per batch. Each
# exchange costs the driver's event loop its TLS, framing and handler work whatever its size, and
# competes with the server's thread for the GIL. Serving a batch takes the server's thread ~0.1 ms
# a trial, and every study open on the cluster waits for that one thread: beside other studies a
# loop holds at most SHARED_FILL_PREFETCH, so their exchanges wait ~6 ms, not ~25 ms, behind it.
MAX_FILL_PREFETCH = 256
SHARED_FILL_PREFETCH = 64


def prefetch_policy(cfg: StudyConfig, shared: bool = False) -> dict[str, Any]:
    """How many trials a loop may hold beyond the one it runs, and how it picks within that,
    for a study alone on its cluster or `shared` with other open studies.

    - `fill` (auto, samplers that ignore history): enough to cover a round trip, up to 256
      (64 when `shared`);
    - `adaptive` (auto, samplers that learn from history): one, and only while the round trip
      is 5% to 4x a trial (waiting would cost at least ~5% of the loop's time), so sampling
      hides behind a running trial without feeding the sampler trials sampled blind where
      that buys little; where trials are shorter than a quarter of a round trip, the server
      samples the loop's next trial while its reply travels instead (`ask_ahead`);
    - `fixed`: exactly `prefetch` (the study file's value; 0 turns prefetching off), and 0
      under `scheduling: reproducible` unless the study file sets it.
    """
    if cfg.prefetch is not None:
        return {"mode": "fixed", "cap": cfg.prefetch}
    if cfg.scheduling == "reproducible":
        # The window lets at most c trials be in flight: a held one would only take the slot
        # of an idle loop and make the window wait behind a running trial.
        return {"mode": "fixed", "cap": 0}
    if cfg.sampler.name in HISTORY_FREE_SAMPLERS:
        return {"mode": "fill", "cap": SHARED_FILL_PREFETCH if shared else MAX_FILL_PREFETCH}
    return {"mode": "adaptive", "cap": 1}
