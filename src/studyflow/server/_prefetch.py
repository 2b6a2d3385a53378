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
# competes with the server's thread for the GIL; serving a batch takes the server thread (shared
# by every study of the cluster) ~0.1 ms a trial, so 256 keeps a batch to ~25 ms.
MAX_FILL_PREFETCH = 256


def prefetch_policy(cfg: StudyConfig) -> dict[str, Any]:
    """How many trials a loop may hold beyond the one it runs, and how it picks within that.

    - `fill` (auto, samplers that ignore history): enough to cover a round trip, up to 256;
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
        return {"mode": "fill", "cap": MAX_FILL_PREFETCH}
    return {"mode": "adaptive", "cap": 1}
