"""Greenlets whose repr never shows their arguments.

When a greenlet raises, gevent prints ``<Greenlet at 0x...: func(arg1, arg2)>  failed
with ...`` to stderr, each argument's repr cut to 50 characters: a message's dict there
shows its PAN. geviso spawns a greenlet that takes a message with :func:`spawn`, whose
repr names only the function. Where even the exception's text may quote the message
(a user's handler or strategy, a peer-driven path), :func:`spawn_guarded` and
:func:`spawn_later_guarded` also catch what the function raises and log it masked, at
WARNING at most once per interval (:mod:`geviso.ratelog`): a peer may be able to make
every message fail the same way.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import gevent

from . import masking
from .ratelog import SummaryLog

log = logging.getLogger(__name__)
_failures = SummaryLog(log)


class QuietGreenlet(gevent.Greenlet):  # type: ignore[misc]  # gevent is untyped
    """A :class:`gevent.Greenlet` whose repr shows its function, never its arguments."""

    def _formatinfo(self) -> str:
        func = self._run
        return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__)


def spawn(func: Callable[..., Any], *args: Any, **kwargs: Any) -> QuietGreenlet:
    """:func:`gevent.spawn` of a :class:`QuietGreenlet`."""
    greenlet: QuietGreenlet = QuietGreenlet.spawn(func, *args, **kwargs)
    return greenlet


def spawn_later(seconds: float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> QuietGreenlet:
    """:func:`gevent.spawn_later` of a :class:`QuietGreenlet`."""
    greenlet: QuietGreenlet = QuietGreenlet.spawn_later(seconds, func, *args, **kwargs)
    return greenlet


def guard(func: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """A closure running ``func(*args)`` that logs what it raises, masked, and returns None."""
    name = getattr(func, "__qualname__", None) or type(func).__name__

    def guarded() -> Any:
        try:
            return func(*args)
        except Exception as exc:  # noqa: BLE001 - logged masked, never printed with the message
            _failures.warning(name, f"failed: {type(exc).__name__}: {masking.mask_text(str(exc))}")
            return None

    guarded.__name__ = guarded.__qualname__ = name
    return guarded


def spawn_guarded(func: Callable[..., Any], *args: Any) -> QuietGreenlet:
    """:func:`spawn` of ``func(*args)``, what it raises logged masked (see :func:`guard`)."""
    return spawn(guard(func, *args))


def spawn_later_guarded(seconds: float, func: Callable[..., Any], *args: Any) -> QuietGreenlet:
    """:func:`spawn_guarded`, started ``seconds`` from now."""
    greenlet: QuietGreenlet = QuietGreenlet.spawn_later(seconds, guard(func, *args))
    return greenlet


__all__ = ["QuietGreenlet", "guard", "spawn", "spawn_guarded", "spawn_later", "spawn_later_guarded"]
