"""A hook for tracing: listeners told when each ``send()`` starts and ends.

geviso depends on no tracing library. Give a :class:`~geviso.Connection` (or every link
a pool's factory builds) ``listeners=[...]``; each listener's ``request_start(conn,
request)`` runs before the request is queued and returns a token (a span, a start
time, anything), and ``request_end(token, response, error)`` runs when the send
finishes with exactly one of ``response`` or ``error``. Listeners run in the sending
greenlet, so a context variable set around ``send()`` is visible to them. A listener
that raises is counted in ``conn.stats.errors`` and logged once; the send goes on.
With no listener, ``send()`` pays one attribute test.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from .codec import Message

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)


class RequestListener(Protocol):
    """What ``Connection(listeners=[...])`` calls around every ``send()``."""

    def request_start(self, conn: Connection, request: Mapping[str, str]) -> Any:
        """The request is about to go out; the return value comes back to
        :meth:`request_end`. ``request`` is the caller's message: read it, don't keep it."""

    def request_end(self, token: Any, response: Optional[Message], error: Optional[BaseException]) -> None:
        """The send finished: ``response`` on success, else ``error`` (the exception the
        caller gets: :class:`~geviso.SendTimeout`, :class:`~geviso.ConnectionClosed`...)."""


class CallbackListener:
    """A listener made of two plain functions (either may be None):
    ``on_request_start(conn, request) -> token`` and
    ``on_request_end(token, response, error)``."""

    def __init__(
        self,
        on_request_start: Optional[Callable[[Connection, Mapping[str, str]], Any]] = None,
        on_request_end: Optional[Callable[[Any, Optional[Message], Optional[BaseException]], None]] = None,
    ) -> None:
        self.on_request_start = on_request_start
        self.on_request_end = on_request_end

    def request_start(self, conn: Connection, request: Mapping[str, str]) -> Any:
        """Call ``on_request_start``; its result is the token."""
        return self.on_request_start(conn, request) if self.on_request_start is not None else None

    def request_end(self, token: Any, response: Optional[Message], error: Optional[BaseException]) -> None:
        """Call ``on_request_end``."""
        if self.on_request_end is not None:
            self.on_request_end(token, response, error)


_warned: weakref.WeakSet[Any] = weakref.WeakSet()


def _listener_failed(conn: Connection, listener: Any, exc: Exception) -> None:
    conn.stats.errors += 1
    try:
        first = listener not in _warned
        _warned.add(listener)
    except TypeError:  # not weakly referenceable: warn every time rather than never
        first = True
    if first:
        log.warning("tracing listener %s raised %s (further failures are counted in stats.errors)",
                    type(listener).__name__, type(exc).__name__)


def traced_send(
    conn: Connection,
    send: Callable[..., Message],
    listeners: Sequence[RequestListener],
    doc: Mapping[str, str],
    timeout: Optional[float],
) -> Message:
    """Run ``send(doc, timeout=timeout)`` between the listeners' start and end calls."""
    tokens: list[Any] = []
    for listener in listeners:
        try:
            tokens.append(listener.request_start(conn, doc))
        except Exception as exc:
            tokens.append(None)
            _listener_failed(conn, listener, exc)
    response: Optional[Message] = None
    error: Optional[BaseException] = None
    try:
        response = send(doc, timeout=timeout)
        return response
    except BaseException as exc:
        error = exc
        raise
    finally:
        for listener, token in zip(listeners, tokens):
            try:
                listener.request_end(token, response, error)
            except Exception as exc:
                _listener_failed(conn, listener, exc)


__all__ = ["CallbackListener", "RequestListener", "traced_send"]
