"""Links to several hosts, each kept up by its own greenlet, shared by every caller.

One greenlet per address (in a ``gevent.pool.Group``) owns that address's link: it builds
it with the factory, connects it (``on_connect`` signs on), waits for it to close, backs
off and reconnects, until :meth:`Pool.close`. Callers never check links out: ``get()``
picks a usable one by strategy and ``send()`` sends on it, moving to the next link only
when the request was certainly not written.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

import gevent
import gevent.event
import gevent.pool

from . import masking, options, threads
from .connection import Address, Connection, close_quietly, parse_address
from .errors import (
    ConfigurationError,
    ConnectErrors,
    ConnectFailed,
    ConnectionClosed,
    GevisoError,
    NoConnections,
    NotConnected,
    PoolClosed,
    SendTimeout,
)
from .metrics import Totals
from .options import number, optional_seconds, seconds

log = logging.getLogger(__name__)

Factory = Callable[[Any], Connection]
Filter = Callable[[Connection], bool]
#: A custom strategy gets the usable links (address order) and the message being sent
#: (None for a bare ``get()``) and returns one of the links, or None for "none fits".
Strategy = Callable[[list[Connection], Optional[Mapping[str, str]]], Optional[Connection]]

#: Seconds between two warnings that the custom strategy chose a link it was not offered.
_FALLBACK_LOG_INTERVAL = 60.0

ROUND_ROBIN = "round-robin"
PRIMARY_SECONDARY = "primary-secondary"
STRATEGIES = (ROUND_ROBIN, PRIMARY_SECONDARY)

# States of one address's link, as ``pool.stats`` shows them.
NEW, CONNECTING, UP, WAITING, CLOSED = "new", "connecting", "up", "waiting", "closed"


class _Slot:
    """One address of the pool: its current link and what its loop has done."""

    __slots__ = (
        "address",
        "label",
        "conn",
        "state",
        "attempts",
        "failures",
        "ups",
        "last_error",
        "next_attempt",
        "first_done",
        "first_error",
        "greenlet",
    )

    def __init__(self, address: Any) -> None:
        self.address = address
        try:
            host, port = parse_address(address)
            self.label = f"{host}:{port}"
        except (ConfigurationError, TypeError, ValueError):
            self.label = str(address)
        self.conn: Optional[Connection] = None
        self.state = NEW
        self.attempts = 0  # factory + connect attempts
        self.failures = 0  # attempts that failed
        self.ups = 0  # attempts that gave a signed-on link
        self.last_error: Optional[BaseException] = None
        self.next_attempt: Optional[float] = None  # time.monotonic() of the next attempt
        self.first_done = gevent.event.Event()
        self.first_error: Optional[BaseException] = None
        self.greenlet: Optional[gevent.Greenlet] = None

    def as_dict(self) -> dict[str, Any]:
        err = self.last_error
        wait = None if self.next_attempt is None else max(0.0, self.next_attempt - time.monotonic())
        return {
            "address": self.label,
            "state": self.state,
            "attempts": self.attempts,
            "failures": self.failures,
            "reconnects": max(0, self.ups - 1),
            "last_error": None if err is None else f"{type(err).__name__}: {masking.mask_text(str(err))}",
            "next_attempt_in": None if self.state != WAITING else round(wait or 0.0, 3),
        }


_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _left(deadline: Optional[float], cap: Optional[float] = None) -> Optional[float]:
    """Seconds left before ``deadline`` (None: no deadline), at most ``cap``."""
    if deadline is None:
        return cap
    left = max(0.0, deadline - time.monotonic())
    return left if cap is None else min(left, cap)


def _abandon_in_child() -> None:
    """``os.fork`` hook, in the child: drop every inherited link before its greenlets
    can run (nothing is written; the parent keeps using them)."""
    me = threading.get_ident()
    for pool in list(_pools):
        if pool._thread == me:
            try:
                pool._abandon()
            except Exception:  # noqa: BLE001 - a fork hook must not raise
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_abandon_in_child)


class Pool:
    """Links to several card hosts, kept up in the background.

    ``factory(address)`` builds an unconnected :class:`~geviso.Connection` for an address
    (per-address TLS goes there); addresses may repeat. After a link closes its address
    waits ``reconnect_wait`` seconds before the first retry, doubling after each failure
    up to ``max_reconnect_wait`` (0 = no doubling), each wait scaled by a random factor
    within ``1 ± jitter`` so a fleet does not reconnect in step. Factory and ``on_connect``
    failures are retried the same way, and each reaches ``on_error(exc)``.

    A link is usable once ``on_connect`` has finished, while it is open and passes
    ``filter(conn)``. ``strategy`` picks among usable links: ``"round-robin"``,
    ``"primary-secondary"`` (the first usable in address order, so traffic fails over to
    the next address and back when the first returns) or a callable ``(links, doc) ->
    link`` given the usable links not yet tried for this request: anything else it
    returns but None ("none fits") is replaced by the first of them, and counted in
    :attr:`strategy_fallbacks`.

    Fork: a pool belongs to the process that built it. In a forked child the inherited
    links are dropped at once without writing anything (the parent keeps using them) and,
    at the child's first use, the pool dials links of its own; a child that only closes
    the pool makes no traffic at all.
    """

    def __init__(
        self,
        factory: Factory,
        addresses: Sequence[Address],
        *,
        reconnect_wait: float = 5.0,
        max_reconnect_wait: float = 60.0,
        jitter: float = 0.1,
        min_connections: int = 1,
        filter: Optional[Filter] = None,  # noqa: A002 - the documented option name
        strategy: Union[str, Strategy] = ROUND_ROBIN,
        on_error: Optional[Callable[[BaseException], Any]] = None,
    ) -> None:
        options.handler(factory, "factory", optional=False)
        if isinstance(addresses, str):
            addresses = [addresses]  # a single "host:port"
        if addresses is None:
            raise ConfigurationError("a pool needs at least one address")
        addresses = options.items(addresses, "addresses", lambda _: True, "addresses")
        if not addresses:
            raise ConfigurationError("a pool needs at least one address")
        reconnect_wait = seconds(reconnect_wait, "reconnect_wait", positive=True)
        max_reconnect_wait = seconds(max_reconnect_wait, "max_reconnect_wait (0 = no doubling)")
        jitter = number(jitter, "jitter", high=1.0, unit="a fraction")
        if isinstance(min_connections, bool) or not isinstance(min_connections, int) or not (
            0 <= min_connections <= len(addresses)
        ):
            raise ConfigurationError(f"min_connections must be 0..{len(addresses)} (the number of addresses)")
        if not callable(strategy) and strategy not in STRATEGIES:
            raise ConfigurationError(f"strategy must be one of {', '.join(STRATEGIES)} or a callable")
        options.handler(filter, "filter")
        options.handler(on_error, "on_error")
        self.factory = factory
        self.addresses = list(addresses)
        self.reconnect_wait = reconnect_wait
        self.max_reconnect_wait = max(reconnect_wait, max_reconnect_wait)
        self.jitter = jitter
        self.min_connections = min_connections
        self.filter = filter
        self.strategy = strategy
        self.on_error = on_error
        self._slots = [_Slot(a) for a in self.addresses]
        self._group = gevent.pool.Group()
        self._stop = gevent.event.Event()
        self._close_done = gevent.event.Event()
        self._started = False
        self._closed = False
        self._cursor = 0
        #: Times the custom strategy returned a link it was not offered (the pool then
        #: took the first usable link instead).
        self.strategy_fallbacks = 0
        self._fallback_logged = 0.0
        #: Stats of every link this pool ever had, summed (``pool.stats`` shows them).
        self.totals = Totals()
        self._pid = os.getpid()
        self._thread = threading.get_ident()
        self._owner = threads.owner()
        _pools.add(self)

    # -- connecting -------------------------------------------------------------------
    def connect(self, timeout: Optional[float] = None) -> Pool:
        """Start every address's loop and wait for each first attempt (each bounded by
        its link's ``connect_timeout`` and sign-on, or by ``timeout`` overall).

        Raises :class:`ConnectErrors` (holding every failure) when fewer than
        ``min_connections`` links came up. The error is a report, not the pool's end:
        the pool stays open and every failed address keeps dialling in the background,
        so the pool comes up when its hosts do; only :meth:`close` closes it.
        """
        timeout = optional_seconds(timeout, "timeout")
        self._checkpid()
        threads.check(self._owner, self)
        if self._closed:
            raise PoolClosed("pool is closed")
        if self._started:
            raise GevisoError("connect() on a pool already connected")
        self._started = True
        self._spawn_loops()
        self._wait_first_attempts(timeout)
        up = sum(1 for s in self._slots if s.state == UP)
        if up >= self.min_connections:
            log.info("pool %s connected", self)
            return self
        errors: list[BaseException] = []
        for slot in self._slots:
            if slot.first_error is not None:
                errors.append(slot.first_error)
            elif slot.state != UP:
                errors.append(ConnectFailed(f"no link to {slot.label} within {timeout}s"))
        raise ConnectErrors(f"{up} of {len(self._slots)} links came up, min_connections={self.min_connections}", errors)

    def _spawn_loops(self) -> None:
        for slot in self._slots:
            slot.greenlet = self._group.spawn(self._run, slot)

    def _wait_first_attempts(self, timeout: Optional[float]) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for slot in self._slots:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            slot.first_done.wait(remaining)

    def _run(self, slot: _Slot) -> None:
        """The loop that owns one address's link, until the pool closes."""
        try:
            self._keep_up(slot)
        except gevent.GreenletExit:
            conn = slot.conn
            if conn is not None and not conn.closed:
                conn.fail(ConnectionClosed("pool closed"))
        finally:
            slot.state = CLOSED
            slot.next_attempt = None
            slot.first_done.set()

    def _keep_up(self, slot: _Slot) -> None:
        delay = self.reconnect_wait
        first = True
        while not self._stop.is_set():
            if not first:
                wait = delay * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else delay
                slot.state = WAITING
                slot.next_attempt = time.monotonic() + wait
                if self._stop.wait(wait):
                    return
                slot.next_attempt = None
                delay = min(delay * 2, self.max_reconnect_wait)
            first = False
            conn = self._attempt(slot)
            if conn is None:
                continue
            if self._stop.is_set():  # the pool closed while we signed on
                close_quietly(conn)
                return
            delay = self.reconnect_wait
            conn.wait_closed()
            slot.conn = None
            if self._stop.is_set():
                return
            reason = conn.failure
            log.warning(
                "pool: link to %s lost%s; reconnecting",
                slot.label,
                f" ({type(reason).__name__}: {masking.mask_text(str(reason))})" if reason is not None else "",
            )

    def _attempt(self, slot: _Slot) -> Optional[Connection]:
        """Build, connect and sign on one link; None (error reported) if that failed."""
        slot.attempts += 1
        slot.state = CONNECTING
        try:
            try:
                conn = self.factory(slot.address)
            except Exception as exc:
                text = masking.mask_text(str(exc))
                raise ConnectFailed(f"factory for {slot.label} raised {type(exc).__name__}: {text}") from exc
            slot.conn = conn
            self.totals.track(conn)
            conn.connect()
        except Exception as exc:
            slot.conn = None
            slot.failures += 1
            slot.last_error = exc
            if not slot.first_done.is_set():
                slot.first_error = exc
                slot.first_done.set()
            self._report(exc)
            return None
        slot.state = UP
        slot.ups += 1
        if slot.ups > 1:
            self.totals.reconnects += 1
        slot.first_done.set()
        log.info("pool: link to %s up", slot.label)
        return conn

    def _report(self, exc: BaseException) -> None:
        """A failure no caller receives: to ``on_error`` (in its own greenlet) or the log."""
        log.warning("pool: %s", masking.mask_text(str(exc)) or type(exc).__name__)
        if self.on_error is not None:
            gevent.spawn(self._run_on_error, exc)

    def _run_on_error(self, exc: BaseException) -> None:
        try:
            assert self.on_error is not None
            self.on_error(exc)
        except Exception as handler_exc:
            log.error("pool on_error handler failed: %s", type(handler_exc).__name__)

    # -- using ------------------------------------------------------------------------
    def _usable(self, conn: Optional[Connection]) -> bool:
        if conn is None or not conn.ready or conn.closed:
            return False
        return self.filter is None or bool(self.filter(conn))

    def _check_usable_pool(self) -> None:
        self._checkpid()
        threads.check(self._owner, self)
        if self._closed:
            raise PoolClosed("pool is closed")
        if not self._started:
            raise NotConnected("pool used before connect()")

    def _pick(self, doc: Optional[Mapping[str, str]], exclude: Sequence[Connection] = ()) -> Optional[Connection]:
        usable = self._usable
        # The usual send has tried no link yet: no closure, no test against ``exclude``.
        ok: Callable[[Optional[Connection]], bool] = (
            usable if not exclude else lambda conn: usable(conn) and all(conn is not x for x in exclude)
        )
        slots = self._slots
        if self.strategy == ROUND_ROBIN:
            n = len(slots)
            start = self._cursor
            for i in range(n):
                conn = slots[(start + i) % n].conn
                if ok(conn):
                    self._cursor = (start + i + 1) % n
                    return conn
            return None
        if self.strategy == PRIMARY_SECONDARY:
            for slot in slots:
                if ok(slot.conn):
                    return slot.conn
            return None
        candidates = [s.conn for s in slots if s.conn is not None and ok(s.conn)]  # None check: for mypy
        if not candidates:
            return None
        assert callable(self.strategy)
        chosen = self.strategy(candidates, doc)
        if chosen is None or any(chosen is c for c in candidates):
            return chosen
        # Not one of the links it was offered (a link it cached that has closed since, one
        # already tried for this request, anything else): the first usable link instead.
        self.strategy_fallbacks += 1
        if self.strategy_fallbacks == 1 or time.monotonic() - self._fallback_logged >= _FALLBACK_LOG_INTERVAL:
            self._fallback_logged = time.monotonic()
            log.warning(
                "pool: the strategy returned %s, not one of the %d usable links offered; "
                "using the first of them (%d times so far)",
                "a link" if isinstance(chosen, Connection) else f"a {type(chosen).__name__}",
                len(candidates),
                self.strategy_fallbacks,
            )
        return candidates[0]

    def get(self, doc: Optional[Mapping[str, str]] = None) -> Connection:
        """A usable link chosen by the strategy (``doc`` is handed to a custom one).

        Links are shared, not checked out. Raises :class:`PoolClosed`,
        :class:`NoConnections` or :class:`NotConnected` (before ``connect()``).
        """
        self._check_usable_pool()
        conn = self._pick(doc)
        if conn is None:
            raise NoConnections(f"no usable link ({self._up_text()})")
        return conn

    def send(self, doc: Mapping[str, str], *, timeout: Optional[float] = None) -> dict[str, str]:
        """Send a request on a usable link and return its response.

        When the chosen link fails before the request was written it goes to the next
        usable link; a request that may have reached the host is never sent again: its
        loss raises :class:`ConnectionClosed` with ``sent=True``. :class:`NoConnections`
        means the request was written nowhere. ``timeout`` bounds the whole call
        (default: the chosen link's ``send_timeout``).
        """
        self._check_usable_pool()
        timeout = optional_seconds(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        tried: list[Connection] = []
        last: Optional[ConnectionClosed] = None
        # Each pass tries a link not tried yet; links replaced by reconnects meanwhile
        # are new ones, so the passes are bounded too.
        for _ in range(2 * len(self._slots) + 1):
            conn = self._pick(doc, tried)
            if conn is None:
                if self._closed:
                    raise PoolClosed("pool is closed") from last
                if last is not None:
                    raise NoConnections(
                        f"no usable link took the request ({len(tried)} failed before writing it)"
                    ) from last
                raise NoConnections(f"no usable link ({self._up_text()})")
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SendTimeout(f"no link took the request within {timeout:g}s") from last
            try:
                return conn.send(doc, timeout=remaining)
            except ConnectionClosed as exc:
                if exc.sent:
                    raise
                log.info("pool: link %s closed before the request was written; trying the next", conn)
                tried.append(conn)
                last = exc
        raise NoConnections(f"no usable link took the request ({len(tried)} failed before writing it)") from last

    # -- state ------------------------------------------------------------------------
    @property
    def connections(self) -> list[Connection]:
        """The links that are up (signed on and open), in address order, filter or not."""
        return [s.conn for s in self._slots if s.conn is not None and s.conn.ready and not s.conn.closed]

    @property
    def usable(self) -> list[Connection]:
        """The links ``get()`` may return right now, in address order."""
        return [s.conn for s in self._slots if s.conn is not None and self._usable(s.conn)]

    @property
    def is_up(self) -> bool:
        """At least one usable link."""
        return not self._closed and any(self._usable(s.conn) for s in self._slots)

    @property
    def is_degraded(self) -> bool:
        """Fewer usable links than addresses."""
        return len(self.usable) < len(self._slots)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def stats(self) -> dict[str, Any]:
        """Plain data: the counters of every link the pool ever had, summed (see
        :class:`~geviso.metrics.LinkStats`), reconnects so far, requests in flight,
        usable links, and each address's state."""
        data = self.totals.stats().as_dict()
        data.update(
            closed=self._closed,
            in_flight=sum(conn.in_flight for conn in self.connections),
            usable=len(self.usable),
            strategy_fallbacks=self.strategy_fallbacks,
            addresses=[s.as_dict() for s in self._slots],
        )
        return data

    def _up_text(self) -> str:
        return f"{len(self.usable)} of {len(self._slots)} usable"

    def __repr__(self) -> str:
        name = self.strategy if isinstance(self.strategy, str) else "custom"
        state = "closed" if self._closed else self._up_text()
        return f"<geviso.Pool {name} {state}>"

    def __enter__(self) -> Pool:
        if not self._started:
            try:
                self.connect()
            except BaseException:
                self.close()  # the with statement owns the pool: nobody else can close it
                raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- closing ----------------------------------------------------------------------
    def close(self, timeout: Optional[float] = None) -> None:
        """Stop every reconnect loop and close every link gracefully; idempotent.

        Returns within ``timeout`` seconds when one is given, sign-offs included: each
        link's ``close()`` gets the time left, and links still open at the deadline are
        failed. Without ``timeout`` each link waits up to its ``send_timeout`` for its
        in-flight requests. Links still dialling or signing on are dropped. In a forked
        child that never used the pool, nothing is dialled or written.
        """
        timeout = optional_seconds(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._checkpid(dial=False)
        threads.check(self._owner, self)
        if self._closed:
            if gevent.getcurrent() not in self._group:
                self._close_done.wait(timeout)
            return
        self._closed = True
        self._stop.set()
        me = gevent.getcurrent()
        slots = list(self._slots)
        for slot in slots:
            g = slot.greenlet
            if slot.state == CONNECTING and g is not None and g is not me:
                g.kill(block=False)
        links = [s.conn for s in slots if s.state == UP and s.conn is not None and not s.conn.closed]
        closers = [gevent.spawn(close_quietly, conn, _left(deadline)) for conn in links]
        gevent.joinall(closers, timeout=_left(deadline))
        for conn in links:
            if not conn.closed:
                conn.fail(ConnectionClosed("pool closed: close() timeout"))
        gevent.killall(closers, block=False)
        for g in list(self._group):
            if g is not me:
                g.join(_left(deadline, 1.0))
                g.kill(block=True, timeout=_left(deadline, 1.0))
        self._close_done.set()
        log.info("pool %s closed", self)

    # -- fork -------------------------------------------------------------------------
    def _abandon(self) -> None:
        """Drop inherited links and loops (in a forked child): no byte is written."""
        for slot in self._slots:
            conn = slot.conn
            if conn is not None and not conn.closed:
                conn.fail(ConnectionClosed("link belongs to the parent process"))
            slot.conn = None
        for g in list(self._group):
            g.kill(block=False)

    def _checkpid(self, *, dial: bool = True) -> None:
        """In a forked child, replace the parent's links by the child's own (redis-py);
        with ``dial`` False (closing) the child gets no links at all."""
        pid = os.getpid()
        if pid == self._pid:
            return
        self._abandon()
        self._pid = pid
        self._thread = threading.get_ident()
        self._owner = threads.owner()
        self._slots = [_Slot(a) for a in self.addresses]
        self._group = gevent.pool.Group()
        self._cursor = 0
        if dial and self._started and not self._closed:
            log.info("pool %s: forked (pid %d), dialling links of our own", self, pid)
            self._spawn_loops()
            self._wait_first_attempts(None)
