"""A study's trial counts as the summaries and the index show them: the objective's failures
apart from the trials lost with their worker or an interrupted run (each re-run as another
trial, so not the objective's, and not a trial of its own)."""

from __future__ import annotations

from collections.abc import Iterable

from studyflow._attrs import INFRA_ERRORS


def trial_counts(states: Iterable[str], errors: Iterable[str | None]) -> dict[str, int]:
    """`n_trials` (every row but the lost), `complete`, `pruned`, `failed`, `lost`, from a
    trials table's `state` and `error` columns."""
    counts = {"n_trials": 0, "complete": 0, "pruned": 0, "failed": 0, "lost": 0}
    for state, error in zip(states, errors):
        if state == "FAIL" and isinstance(error, str) and error.startswith(INFRA_ERRORS):
            counts["lost"] += 1
            continue
        counts["n_trials"] += 1
        if state in ("COMPLETE", "PRUNED"):
            counts[state.lower()] += 1
        elif state == "FAIL":
            counts["failed"] += 1
    return counts
