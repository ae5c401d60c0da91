"""At most one WARNING line per interval for errors a peer can repeat at will.

A peer that sends garbage frames, stray responses or bad handshakes must not drive one
log line per message: the first error of an interval is logged at WARNING, the others
at DEBUG and counted, and the next WARNING line says how many there were.
"""

from __future__ import annotations

import logging
import time
from typing import Any

#: Seconds between two WARNING lines of one :class:`SummaryLog` (one per link or server).
SUMMARY_INTERVAL = 10.0


class SummaryLog:
    """Rate-limits one source's WARNING lines (texts must be safe already: masked and
    escaped)."""

    __slots__ = ("logger", "interval", "held", "_due")

    def __init__(self, logger: logging.Logger, interval: float = SUMMARY_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        #: Errors logged at DEBUG only since the last WARNING line.
        self.held = 0
        self._due = 0.0

    def warning(self, source: Any, text: str) -> None:
        """Log ``source: text`` at WARNING if none was logged this interval, else count it."""
        now = time.monotonic()
        if now < self._due:
            self.held += 1
            self.logger.debug("%s: %s", source, text)
            return
        self._due = now + self.interval
        held, self.held = self.held, 0
        if held:
            self.logger.warning("%s: %s (and %d similar errors since the last such line)", source, text, held)
        else:
            self.logger.warning("%s: %s", source, text)

    def flush(self, source: Any) -> None:
        """One last line for errors still counted (when the source closes)."""
        if self.held:
            self.logger.warning("%s: %d more errors logged at DEBUG only", source, self.held)
            self.held = 0
