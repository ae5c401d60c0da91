"""Greenlets whose repr never shows their arguments.

When a greenlet raises, gevent prints ``<Greenlet at 0x...: func(arg1, arg2)>  failed
with ...`` to stderr, each argument's repr cut to 50 characters: a message's dict there
shows its PAN. geviso spawns a greenlet that takes a message with :func:`spawn`, whose
repr names only the function.
"""

from __future__ import annotations

from typing import Any, Callable

import gevent


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


__all__ = ["QuietGreenlet", "spawn", "spawn_later"]
