"""Every private Optuna and distributed name studyflow uses, in one place.

Optuna and distributed do not promise these names between releases, so they are reached only
through this module, which checks at import that the installed versions are ones the code was
written and tested against, and fails with one line naming the supported range otherwise.
`tests/test_compat.py` pins the set of names.
"""

from __future__ import annotations

import re
from importlib.metadata import version

import optuna

# {distribution: (lowest, first unsupported)}: pyproject.toml states the same ranges
SUPPORTED = {"optuna": ((5, 0), (6, 0)), "distributed": ((2024, 8), None)}


def _release(text: str) -> tuple[int, int]:
    major, minor = (int(part) for part in re.findall(r"\d+", text)[:2])
    return major, minor


def check_versions() -> None:
    """Fail in one line when an installed Optuna or distributed is outside the tested range."""
    for name, (low, high) in SUPPORTED.items():
        found = version(name)
        if _release(found) < low or (high is not None and _release(found) >= high):
            wanted = f">={low[0]}.{low[1]}" + (f",<{high[0]}.{high[1]}" if high else "")
            raise ImportError(f"studyflow needs {name}{wanted} (it reaches into private names that "
                              f"change between releases); {name} {found} is installed")


check_versions()


def fresh_trials_view(study: optuna.Study) -> None:
    """Make the calling thread's next sampler call read the study's trials anew.

    Optuna caches the trial list per thread (`Study._thread_local.cached_all_trials`) and
    clears it only in `ask` and `tell` on that thread. The study server samples on whichever
    thread serves a call (the event loop, or distributed's offload thread), so a
    define-by-run `suggest` or a `should_prune` on a thread that did not ask would see the
    study as it was at that thread's last ask: TPE, GP and CMA-ES stuck in their start-up.
    """
    study._thread_local.cached_all_trials = None
