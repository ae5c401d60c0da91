"""Checks of numeric options: timeouts, intervals and delays, in one place.

A NaN or infinite time handed to a gevent timer jams libev's timer heap (no sleep or
timeout in the process fires again), a boolean is a typo, and a huge one overflows or
never ends. So every timeout, interval and delay geviso takes goes through
:func:`seconds` (or :func:`number`), which returns a plain float or raises a one-line
:class:`~geviso.errors.ConfigurationError` naming the option.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

from .errors import ConfigurationError

#: The longest time any option may be: one day. Longer is a mistake, not a setting.
MAX_SECONDS = 86_400.0


def _shown(value: Any) -> str:
    """The value for an error text: short (a 400-digit number is cut), never a message."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "...(" + str(len(text)) + " characters)"


def _plain(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else str(bound)


def number(
    value: Any,
    name: str,
    *,
    low: float = 0.0,
    high: float = MAX_SECONDS,
    low_open: bool = False,
    unit: str = "seconds",
) -> float:
    """``value`` as a float between ``low`` and ``high`` (``low`` itself excluded with
    ``low_open``); anything else (NaN, infinities, booleans, strings, out of range)
    raises :class:`ConfigurationError` naming ``name``."""
    kind = type(value)
    if (kind is float or kind is int) and (value > low if low_open else value >= low) and value <= high:
        return float(value)  # the common case, per send: no message built (NaN fails both tests)
    expected = f"{name} must be {unit} {'>' if low_open else '>='} {_plain(low)} and <= {_plain(high)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{expected}; got {_shown(value)}")
    # Compare before converting: float() of a 400-digit int raises OverflowError.
    real: Any = value  # numbers.Real declares no comparisons
    try:
        too_big = bool(real > high)
        too_small = bool(real <= low) if low_open else bool(real < low)
        result = float(real)
    except (ArithmeticError, TypeError, ValueError):
        raise ConfigurationError(f"{expected}; got {_shown(value)}") from None
    if math.isnan(result) or too_big or too_small or math.isinf(result):
        raise ConfigurationError(f"{expected}; got {_shown(value)}")
    return result


def seconds(value: Any, name: str, *, positive: bool = False) -> float:
    """A time option in seconds: 0 to one day (over 0 with ``positive``)."""
    return number(value, name, low_open=positive)


def optional_seconds(value: Any, name: str, *, positive: bool = False) -> Optional[float]:
    """:func:`seconds`, with None passed through (an option that may be off or default)."""
    return None if value is None else number(value, name, low_open=positive)


__all__ = ["MAX_SECONDS", "number", "optional_seconds", "seconds"]
