"""Request keys: how a response finds the request it answers.

A key function takes a message (dict) and returns a hashable key; a response must give
the same key as its request. It raises ``KeyError`` naming the missing field.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Callable

from .errors import ConfigurationError

KeyFunction = Callable[[Mapping[str, str]], Hashable]


def mti_pair(mti: str) -> str:
    """The MTI with request and response mapped together: 0100 and 0110 give ``010``,
    0420, 0421 and 0430 give ``042``. The origin digit is dropped (0101 is a repeat of 0100)."""
    third = mti[2:3]
    # Not ``isdigit()``: it is true for "²", which ``int()`` refuses.
    return mti[:2] + "02468"[int(third) >> 1] if third and third in "0123456789" else mti[:3]


class _Prefixes(dict):  # type: ignore[type-arg]
    """MTI -> the prefix of its keys (``"0100"`` -> ``"010:"``), for the MTIs a process
    has seen: a subscript, the lookup :func:`default` makes twice per request (cheaper
    than a ``get()`` call and a test; a miss computes the prefix)."""

    def __missing__(self, mti: str) -> str:
        prefix = f"{mti_pair(mti)}:"
        if len(self) < _PREFIXES_KEPT:  # a peer sending garbage MTIs cannot grow it
            self[mti] = prefix
        return prefix


_PREFIXES = _Prefixes()
_PREFIXES_KEPT = 256


def default(doc: Mapping[str, str]) -> Hashable:
    """STAN plus the paired MTI, as one string (``"010:000001"`` for a 0100 or its 0110):
    a 0400 reusing a pending 0100's STAN does not collide. A string, not a tuple: it
    hashes once, however many times the connection looks it up."""
    prefix: str = _PREFIXES[doc["t"]]
    try:
        return prefix + doc["11"]  # a str concatenation: cheaper than an f-string
    except TypeError:  # a STAN given as another type: as an f-string formats it
        return f"{prefix}{doc['11']}"


def stan_only(doc: Mapping[str, str]) -> Hashable:
    """Field 11 alone (moov's default)."""
    return doc["11"]


def fields(*names: str) -> KeyFunction:
    """A key from the values of ``names``, e.g. ``fields("41", "11")`` (terminal + STAN)."""
    if not names:
        raise ConfigurationError("fields() needs at least one field name")

    def key(doc: Mapping[str, str]) -> Hashable:
        return tuple(doc[name] for name in names)

    key.__name__ = "fields_" + "_".join(names)
    key.__qualname__ = key.__name__
    return key
