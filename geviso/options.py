"""Checks of options: timeouts, intervals and delays, counts, handlers and types, in
one place.

A NaN or infinite time handed to a gevent timer jams libev's timer heap (no sleep or
timeout in the process fires again), a boolean is a typo, and a huge one overflows or
never ends. So every timeout, interval and delay geviso takes goes through
:func:`seconds` (or :func:`number`), which returns a plain float or raises a one-line
:class:`~geviso.errors.ConfigurationError` naming the option.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Callable, Optional, TypeVar, Union

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


T = TypeVar("T")


def whole(value: Any, name: str, *, low: int = 0) -> int:
    """A count option: a whole number (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigurationError(f"{name} must be a whole number >= {low}; got {_shown(value)}")
    return int(value)


def optional_whole(value: Any, name: str, *, low: int = 0) -> Optional[int]:
    """:func:`whole`, with None passed through."""
    return None if value is None else whole(value, name, low=low)


def handler(value: Any, name: str, *, optional: bool = True) -> Any:
    """A callback option: a callable (or None, when ``optional``)."""
    if not callable(value) and not (optional and value is None):
        raise ConfigurationError(f"{name} must be a callable{' or None' if optional else ''}; got {_shown(value)}")
    return value


def instance(value: Any, kind: Union[type[T], tuple[type, ...]], name: str, what: str) -> T:
    """``value`` if it is a ``kind`` (the error says it must be ``what``), else a
    :class:`ConfigurationError` naming the option: never an ``AttributeError`` later."""
    if not isinstance(value, kind):
        raise ConfigurationError(f"{name} must be {what}; got {_shown(value)}")
    return value  # type: ignore[return-value]


def optional_instance(value: Any, kind: Union[type[T], tuple[type, ...]], name: str, what: str) -> Optional[T]:
    """:func:`instance`, with None passed through."""
    return None if value is None else instance(value, kind, name, what)


def items(value: Any, name: str, check: Callable[[Any], bool], what: str) -> list[Any]:
    """An iterable option (not a lone string) as a list, each item passing ``check``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{name} must be a list of {what}; got {_shown(value)}")
    found = list(value)
    for item in found:
        if not check(item):
            raise ConfigurationError(f"{name} must be a list of {what}; one is {_shown(item)}")
    return found


__all__ = [
    "MAX_SECONDS",
    "handler",
    "instance",
    "items",
    "number",
    "optional_instance",
    "optional_seconds",
    "optional_whole",
    "seconds",
    "whole",
]
