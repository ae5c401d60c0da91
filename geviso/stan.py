"""System trace audit numbers (field 11): 000001 to 999999, rolling over, never 000000."""

from __future__ import annotations

from typing import Optional

from .errors import ConfigurationError

MAX_STAN = 999_999


class StanGenerator:
    """A wrapping STAN counter; share one between connections to keep STANs unique
    across links. Deterministic: ``StanGenerator(start=41)`` yields ``000041`` next.

    Greenlet-safe without a lock: :meth:`next` never yields to the hub.
    """

    __slots__ = ("_next",)

    def __init__(self, start: int = 1) -> None:
        if not 1 <= start <= MAX_STAN:
            raise ConfigurationError(f"a STAN is 1..{MAX_STAN}, got {start}")
        self._next = start

    def next(self) -> str:
        """The next STAN as six digits."""
        value = self._next
        self._next = 1 if value >= MAX_STAN else value + 1
        return "%06d" % value

    def peek(self) -> str:
        """The STAN :meth:`next` will return, without taking it."""
        return "%06d" % self._next

    __next__ = next

    def __iter__(self) -> StanGenerator:
        return self

    def __repr__(self) -> str:
        return f"<StanGenerator next={self.peek()}>"


def parse(value: Optional[str]) -> Optional[int]:
    """A STAN field's value as an int, or None when missing or not six digits."""
    if value is None or len(value) != 6 or not value.isdigit():
        return None
    return int(value)
