"""One progress line for a running study: trials done / total, best so far, failures, ETA.

On a terminal it is a tqdm bar on stderr; in a log file (the Snakemake rule's `log:`) it is a
log line at every tenth of the budget (every 30 s for `n_trials: null`), so logs stay short.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

_logger = logging.getLogger("studyflow.progress")
UNCOUNTED_LOG_S = 30.0  # without a trial count to reach (`n_trials: null`), a line this often


class Progress:
    def __init__(self, study: str, total: int | None, enabled: bool = True) -> None:
        """`total` None: `n_trials: null`, no count to reach (no ETA; a line every UNCOUNTED_LOG_S)."""
        self.study = study
        self.total = total
        self.enabled = enabled
        self.started = time.monotonic()
        self._bar = None
        self._next_log = 0
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=study, unit="trial", file=sys.stderr, leave=True)

    def update(self, status: dict[str, Any]) -> None:
        if not self.enabled:
            return
        done = status["complete"] + status["pruned"]
        lost = status.get("lost") or 0  # with a worker or a stopped run, and re-run: not the objective's
        failed = f"{status['failed']} failed" + (f", {lost} lost" if lost else "")
        facts = {"best": _fmt(status["best_value"]), "failed": status["failed"], **({"lost": lost} if lost else {}),
                 "running": status["running"]}
        if self._bar is not None:
            self._bar.n = done if self.total is None else min(done, self.total)
            self._bar.set_postfix(facts, refresh=True)
            return
        elapsed = time.monotonic() - self.started
        if self.total is None:  # no count to reach: a line every UNCOUNTED_LOG_S, and the last
            if elapsed >= self._next_log or status["done"]:
                _logger.info("%s: %d trials, best %s, %s, %d running, %.0f s elapsed", self.study, done,
                             facts["best"], failed, status["running"], elapsed)
                self._next_log = elapsed + UNCOUNTED_LOG_S
            return
        if done >= self._next_log or status["done"]:
            eta = f"{elapsed / done * (self.total - done):.0f} s" if done else "-"  # none before a trial ends
            _logger.info(
                "%s: %d/%d trials, best %s, %s, %d running, %.0f s elapsed, ETA %s",
                self.study, done, self.total, facts["best"], failed, status["running"],
                elapsed, eta,
            )
            self._next_log = done + max(1, self.total // 10)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
