"""Retrieval reference numbers (field 37): unique per node, per day."""

from __future__ import annotations

import datetime
from typing import Optional


class RrnGenerator:
    """Retrieval reference numbers (field 37, 12 characters): ``YDDD`` (last digit of the
    year and day of the year, UTC), one node digit (the Locust worker index) and a
    7-digit counter. Unique per node for ten million references a day."""

    __slots__ = ("node", "_next")

    def __init__(self, node: int = 0, start: int = 0) -> None:
        self.node = node % 10
        self._next = start

    def next(self, now: Optional[datetime.datetime] = None) -> str:
        """The next RRN: year digit, day of year, node digit and a 7-digit counter."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        value, self._next = self._next, (self._next + 1) % 10_000_000
        return f"{now.year % 10}{now.timetuple().tm_yday:03d}{self.node}{value:07d}"


__all__ = ["RrnGenerator"]
