"""Link health: an echo that fails a link whose peer has gone silent.

A half-open link (the host vanished without a FIN, or a middlebox stopped forwarding)
looks healthy to TCP for minutes. Use :func:`echo` as ``on_ping`` and ``on_read_timeout``:
when the link has been idle or silent, it sends an 0800 echo, and if no answer comes in
time it fails the link, so every pending send fails at once and a pool reconnects::

    conn = geviso.Connection(addr, spec, idle_time=5, read_timeout=15,
                             on_ping=geviso.keepalive.echo, on_read_timeout=geviso.keepalive.echo)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .errors import ConnectionClosed, GevisoError, SendTimeout
from .options import optional_seconds, seconds

log = logging.getLogger(__name__)

#: The echo sent by default: network management, field 70 = 301.
ECHO: Mapping[str, str] = {"t": "0800", "70": "301"}


def echo(conn: Any, timeout: Optional[float] = None, *, doc: Optional[Mapping[str, str]] = None) -> bool:
    """Send an echo (``doc``, default :data:`ECHO`) and fail ``conn`` if it gets no answer
    within ``timeout`` (default: the connection's ``send_timeout``); the
    :class:`SendTimeout` goes to the link's ``on_error`` once, so a dropped link is reported.

    True when the host answered (whatever its response code: the link is alive).
    """
    timeout = optional_seconds(timeout, "timeout", positive=True)
    if conn.closed or not conn.ready:
        return False
    try:
        conn.send(dict(doc if doc is not None else ECHO), timeout=timeout)
    except SendTimeout as exc:
        log.warning("no echo answer on %s: failing the link", conn)
        report = getattr(conn, "on_error", None)
        if report is not None:
            try:
                report(exc)
            except Exception as handler_exc:  # noqa: BLE001 - a report must not stop the fail
                log.error("on_error handler of %s failed: %s", conn, type(handler_exc).__name__)
        conn.fail(exc)
        return False
    except ConnectionClosed:
        return False
    except GevisoError as exc:
        # A rejected echo or a key clash still says nothing about the link being dead.
        log.info("echo on %s: %s", conn, type(exc).__name__)
        return False
    return True


def echo_handler(timeout: float, *, doc: Optional[Mapping[str, str]] = None) -> Callable[[Any], bool]:
    """:func:`echo` with its own ``timeout`` (and ``doc``), as an ``on_ping`` /
    ``on_read_timeout`` handler taking only the connection."""
    timeout = seconds(timeout, "timeout", positive=True)

    def handler(conn: Any) -> bool:
        return echo(conn, timeout, doc=doc)

    handler.__name__ = handler.__qualname__ = "keepalive_echo"
    return handler
