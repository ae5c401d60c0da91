"""Retrieval reference numbers (field 37): unique per node, per day."""

from __future__ import annotations

import datetime
import time
from typing import Optional


class RrnGenerator:
    """Retrieval reference numbers (field 37, 12 characters): ``YDDD`` (last digit of the
    year and day of the year, UTC), one node digit (the Locust worker index) and a
    7-digit counter. Unique per node for ten million references a day."""

    __slots__ = ("node", "_next", "_day", "_prefix")

    def __init__(self, node: int = 0, start: int = 0) -> None:
        self.node = node % 10
        self._next = start
        self._day = -1  # the UTC day (days since the epoch) _prefix is for
        self._prefix = ""

    def next(self, now: Optional[datetime.datetime] = None) -> str:
        """The next RRN: year digit, day of year, node digit and a 7-digit counter."""
        value, self._next = self._next, (self._next + 1) % 10_000_000
        if now is not None:
            return f"{self._prefix_of(now)}{value:07d}"
        day = int(time.time() // 86400)
        if day != self._day:  # the prefix changes once a day: not worked out per RRN
            self._day, self._prefix = day, self._prefix_of(datetime.datetime.now(datetime.timezone.utc))
        return f"{self._prefix}{value:07d}"

    def _prefix_of(self, now: datetime.datetime) -> str:
        return f"{now.year % 10}{now.timetuple().tm_yday:03d}{self.node}"


__all__ = ["RrnGenerator"]
