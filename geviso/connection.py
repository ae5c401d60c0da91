"""One ISO 8583 link: a reader and a writer greenlet, many interleaved requests.

``send()`` registers the request under its key (STAN by default) with one
``gevent.event.AsyncResult``, hands the frame to the single writer greenlet (which sends
every frame queued since its last write in one call), or writes it itself when the writer
is idle with nothing queued, and waits. The reader greenlet splits every complete frame
out of each ``recv``, and resolves the pending request whose key the response carries.
Each pending request is resolved exactly once: by its response, a timeout, a rejection,
or the link closing (at once, not at the timeout).
"""

from __future__ import annotations

import logging
import socket as _stdlib_socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Callable, Optional, Union

import gevent
import gevent.event
import gevent.lock
from gevent import getcurrent, socket
from gevent.hub import Waiter, get_hub

from . import errors, keys, masking, options, threads
from .codec import Codec, Message, Received, Spec, codec_for, explain
from .errors import (
    ConnectFailed,
    ConnectionClosed,
    DuplicateKey,
    GevisoError,
    LocalProtocolError,
    NotConnected,
    Rejected,
    SendTimeout,
)
from .framing import TPDU_SIZE, Framing, FramingLike
from .framing import resolve as resolve_framing
from .metrics import LinkStats
from .options import optional_seconds, seconds
from .ratelog import SummaryLog
from .stan import MAX_STAN, StanGenerator
from .threads import ident as thread_ident
from .tls import wrap as tls_wrap
from .tracing import RequestListener, traced_send

log = logging.getLogger(__name__)
DEBUG = logging.DEBUG
#: The logger's own cache of ``isEnabledFor`` answers (logging clears it in place when
#: levels change): a ``False`` in it spares ``send`` the Python call per request.
_LEVELS_SEEN: dict[int, bool] = getattr(log, "_cache", {})

Address = Union[str, tuple[str, int]]
Handler = Callable[..., Any]

# Link states.
NEW, CONNECTING, OPEN, CLOSING, CLOSED = "new", "connecting", "open", "closing", "closed"

#: Bytes of frames queued for the writer beyond which writers wait for it to drain.
DEFAULT_MAX_WRITE_BUFFER = 4 * 1024 * 1024
#: Inbound handlers (requests from the peer) running at once per link; when full, the
#: reader waits, which pushes back on the peer through TCP.
DEFAULT_MAX_INBOUND = 1000
#: Idle ``on_inbound`` workers a link keeps for the next requests; more end when idle.
PARKED_WORKERS = 16
RECV_SIZE = 256 * 1024
#: The reader lets other greenlets run after every ``max(READ_BATCH, n // READ_PARTS)``
#: of the ``n`` frames one ``recv`` brought. Without a pause, a ``recv`` holding 100
#: responses wakes 100 senders whose next requests all leave in one write after the last
#: response is handled: the peer idles meanwhile, and the two ends work in turn. Handling
#: a ``recv`` in a few parts lets both ends (each with its own core) work at once; it
#: also finishes answered sends sooner during a burst.
READ_BATCH = 4
READ_PARTS = 3
#: How many timed-out request keys are remembered to recognise late responses.
LATE_KEYS_KEPT = 4096
INF = float("inf")
#: The handler options (each a callable or None).
HANDLERS = (
    "on_connect", "on_close", "on_established", "on_closed", "on_failed", "on_inbound", "on_ping",
    "on_read_timeout", "on_error",
)
_NO_KEY = object()  # no request key computed yet


def parse_address(address: Address) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``(host, port)`` as a ``(host, port)`` tuple."""
    if isinstance(address, tuple):
        try:
            host, port = address
            host, port = str(host), int(port)
        except (TypeError, ValueError):
            raise errors.ConfigurationError(f"address {address!r} is not (host, port)") from None
    else:
        text = str(address)
        for scheme in ("tcp://", "tls://"):
            if text.startswith(scheme):
                text = text[len(scheme) :]
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise errors.ConfigurationError(f"address {address!r} is not host:port")
        host, port = host.strip("[]") or "127.0.0.1", int(port_text)
    if not 0 <= port <= 65535:
        raise errors.ConfigurationError(f"address {address!r}: the port must be 0..65535")
    if not host.isprintable():  # it would reach log lines and error texts as it is
        raise errors.ConfigurationError(f"address '{masking.escape(host, 80)}': the host has control characters")
    return host, port


class _Pending(gevent.event.AsyncResult):  # type: ignore[misc]
    """One request waiting for its response: itself one ``AsyncResult``, set exactly once.

    The request's key, MTI, start, deadline and place in the write queue ride on the
    ``AsyncResult`` (slots, no second object). Its sender waits for it without a link: a
    loop callback (:func:`_wake_senders`, queued by the reader for all the responses of
    a ``recv``, or by :meth:`resolve`) switches back to it. So a waiting request holds two
    GC-tracked objects (this and gevent's empty link list) and no bound method, and
    waking skips the link walk. Few objects per pending request keep a burst of 100,000
    sends near linear: the cyclic GC walks each of them again and again.
    """

    __slots__ = ("key", "mti", "started", "seq", "deadline", "sender")
    # No __init__: ``_send`` sets the slots on a bare ``_Pending()``, which skips a
    # Python-level constructor per request (130 ns measured).
    key: Hashable
    mti: str
    #: When its send began (monotonic seconds): its latency is counted from here.
    started: float
    #: Its frame's number in the link's write queue (from 1; 0 until queued): the frame
    #: may have reached the peer once the writer took that many.
    seq: int
    #: When the link's reaper times it out (monotonic seconds); negative: it has a
    #: timer of its own (:meth:`wait_done`) and the reaper passes it by.
    deadline: float
    #: The greenlet waiting for it (see ``Connection._send``), or None.
    sender: Any

    def __str__(self) -> str:
        """No value shown: gevent's own ``str()`` would print the response, PAN included
        (and the hub prints ``str()`` of a result whose link callback failed)."""
        return f"<geviso pending request mti={getattr(self, 'mti', '?')} {'done' if self.ready() else 'waiting'}>"

    __repr__ = __str__

    def resolve(self, value: Any = None, exc: Optional[BaseException] = None) -> bool:
        """Set the outcome unless one is set already, and wake the sender; True if this
        call set it."""
        if self.ready():
            return False
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set(value)
        if self.sender is not None:
            get_hub().loop.run_callback(_wake_senders, (self,))
        return True

    def wait_done(self, timeout: float) -> bool:
        """Block until resolved (True) or until ``timeout`` seconds pass (False): for a
        request the reaper cannot time out (its deadline is earlier than one already
        waiting, see :meth:`Connection._send`).

        Waits on the hub with one raw loop timer instead of ``get(timeout=)``, which
        builds a ``gevent.Timeout`` per call: measured 20% faster under load.
        """
        if not self.ready():
            hub = get_hub()
            waiter = Waiter(hub)
            switch = waiter.switch  # one bound method for the link, the timer and the unlink
            # after, repeat, ref, priority: positional, since keywords cost 100 ns a call here
            timer = hub.loop.timer(timeout if timeout > 0.0 else 0.0, 0.0, True, -1)
            self.rawlink(switch)
            timer.start(switch, None, update=True)
            woke_by: Any = None
            try:
                woke_by = waiter.get()
            finally:
                timer.close()
                if woke_by is not self:  # the result pops its link before calling it
                    self.unlink(switch)
        return bool(self.ready())


def close_quietly(conn: Connection, timeout: Optional[float] = None) -> None:
    """Close ``conn`` gracefully; an ``on_close`` error (e.g. a declined sign-off) is
    logged, masked, instead of raised: the link is closed anyway. For owners closing
    many links (server, pool, Locust), where one failure must not stop the rest."""
    try:
        conn.close(timeout=timeout)
    except GevisoError as exc:
        log.warning("closing %s: %s", conn, masking.mask_text(str(exc)))


def _send_all(sock: Any, data: bytes) -> None:
    """Write all of ``data``: one ``send``, and ``sendall`` only for what it left.
    gevent's ``sendall`` makes a ``getsockopt`` system call and its timeout bookkeeping
    on every call; a ``send`` of a few frames nearly always takes them all."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _wake_senders(resolved: Sequence[_Pending]) -> None:
    """The loop callback that wakes the senders of resolved requests, each that still
    waits, in turn: each runs until it blocks again, which switches back here. One
    callback for all the responses of a ``recv`` (as gevent's own link walk does),
    not one per response."""
    for pending in resolved:
        sender = pending.sender
        if sender is not None:
            pending.sender = None
            try:
                sender.switch(pending)
            except BaseException:  # noqa: B036 - raised in us, its parent, by a greenlet that ended with an error
                get_hub().handle_error(sender, *sys.exc_info())  # as the loop would: report, wake the rest


class Connection:
    """A link to a card host (or, from :meth:`from_socket`, from a client).

    Options are keyword arguments; every default is in the signature. Handlers:
    ``on_connect(conn)`` and ``on_close(conn)`` run synchronously and may ``send`` (sign-on,
    sign-off); ``on_established(conn)``, ``on_closed(conn)``, ``on_failed(conn, exc)``,
    ``on_inbound(conn, doc)``, ``on_ping(conn)``, ``on_read_timeout(conn)`` and
    ``on_error(exc)`` run in their own greenlets. ``listeners`` are told when each
    ``send()`` starts and ends (tracing, see :mod:`geviso.tracing`).
    """

    def __init__(
        self,
        address: Address,
        spec: Spec,
        *,
        framing: FramingLike = None,
        send_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        idle_time: float = 5.0,
        read_timeout: float = 60.0,
        key: keys.KeyFunction = keys.default,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        max_in_flight: Optional[int] = None,
        stan: Optional[StanGenerator] = None,
        codec: Optional[Codec] = None,
        max_write_buffer: int = DEFAULT_MAX_WRITE_BUFFER,
        max_inbound: int = DEFAULT_MAX_INBOUND,
        inline_inbound: bool = False,
        on_connect: Optional[Handler] = None,
        on_close: Optional[Handler] = None,
        on_established: Optional[Handler] = None,
        on_closed: Optional[Handler] = None,
        on_failed: Optional[Handler] = None,
        on_inbound: Optional[Handler] = None,
        on_ping: Optional[Handler] = None,
        on_read_timeout: Optional[Handler] = None,
        on_error: Optional[Handler] = None,
        listeners: Sequence[RequestListener] = (),
    ) -> None:
        self.address = parse_address(address)
        self.spec = options.instance(spec, Mapping, "spec", "a pyiso8583 spec (a dict of fields)")
        self.framing = resolve_framing(framing)
        codec = options.optional_instance(codec, Codec, "codec", "a geviso.codec.Codec or None")
        self.codec = codec if codec is not None else codec_for(spec)
        self.send_timeout = seconds(send_timeout, "send_timeout", positive=True)
        self.connect_timeout = seconds(connect_timeout, "connect_timeout", positive=True)
        self.idle_time = seconds(idle_time, "idle_time", positive=True)
        self.read_timeout = seconds(read_timeout, "read_timeout", positive=True)
        self.key: keys.KeyFunction = options.handler(key, "key", optional=False)
        self.tls = options.optional_instance(tls, ssl.SSLContext, "tls", "an ssl.SSLContext (see geviso.tls) or None")
        self.server_hostname = server_hostname
        self.max_in_flight = options.optional_whole(max_in_flight, "max_in_flight")  # 0 or None: no limit
        stan = options.optional_instance(stan, StanGenerator, "stan", "a geviso.StanGenerator or None")
        self.stan = stan if stan is not None else StanGenerator()
        self.max_write_buffer = options.whole(max_write_buffer, "max_write_buffer", low=1)
        for name in HANDLERS:
            options.handler(locals()[name], name)
        self.on_connect = on_connect
        self.on_close = on_close
        self.on_established = on_established
        self.on_closed = on_closed
        self.on_failed = on_failed
        self.on_inbound = on_inbound
        #: Run ``on_inbound`` in the reader greenlet, no greenlet per message: for handlers
        #: that never block (a host answering at once, e.g. MockHost). Default off.
        self.inline_inbound = inline_inbound
        self.on_ping = on_ping
        self.on_read_timeout = on_read_timeout
        self.on_error = on_error
        #: Tracing listeners (:class:`geviso.tracing.RequestListener`) around every send().
        self.listeners = tuple(options.items(listeners, "listeners", lambda _: True, "tracing listeners"))
        #: Application-level status ("online" after sign-on, ...), used by pool filters.
        self.status = ""
        #: True once ``on_connect`` has finished: the link may carry traffic.
        self.ready = False
        self.stats = LinkStats()
        self._warnings = SummaryLog(log)
        self.server_side = False
        self._state = NEW
        self._sock: Any = None
        self._pending: dict[Hashable, _Pending] = {}
        self._timed_out: dict[Hashable, None] = {}
        # The reaper: one loop timer per link, due at the earliest deadline it watches,
        # instead of a timer per request. It watches requests whose deadline is no earlier
        # than any it already watches (all of them when every send has the same timeout),
        # so ``_pending``'s insertion order is their deadline order. See ``_reap``.
        self._reaper: Any = None
        self._reap_at = INF
        self._last_deadline = -INF
        self._slots = gevent.lock.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self._direct = False
        self._direct_turn = -1
        self._outbox: list[bytes] = []  # frames for the writer
        self._outbox_bytes = 0
        self._queued = 0  # frames ever queued...
        self._taken = 0  # ...and how many of them the writer took (written or being written)
        self._wake_writer = gevent.event.Event()
        self._drained = gevent.event.Event()
        self._drained.set()
        self._flushed = gevent.event.Event()
        self._flushed.set()
        self._idle = gevent.event.Event()
        self._closed_event = gevent.event.Event()
        self._closer: Any = None
        self._close_deadline = INF  # when a close() in progress must return
        self._close_error: Optional[BaseException] = None
        self._failure: Optional[BaseException] = None
        max_inbound = options.whole(max_inbound, "max_inbound", low=1)
        # on_inbound's workers (see _dispatch_inbound): greenlets reused from request to
        # request, up to max_inbound of them at once.
        self._max_inbound = max_inbound
        self._inbox: deque[Message] = deque()  # requests no worker has taken yet
        self._inbox_room = gevent.event.Event()  # the reader waits on it when the inbox is full
        self._inbox_full = False  # ...and says so here
        self._workers = 0  # worker greenlets alive: busy, parked, or about to run
        self._parked: list[Waiter] = []  # idle workers, each waiting on its Waiter
        self._spare: Optional[Waiter] = None  # the worker woken (or spawned) that has not run yet
        self._greenlets: list[gevent.Greenlet] = []
        self._ping_greenlet: Optional[gevent.Greenlet] = None
        self._last_read = self._last_write = time.monotonic()
        #: With a TPDU framing, each decoded message carries its frame's TPDU (see reply()).
        self._tpdu_frames = self.framing.tpdu is not None
        self._decoder = self.framing.decoder(keep_tpdu=self._tpdu_frames)
        header = self.framing.header_struct
        self._pack_header = header.pack if header is not None else None
        self._max_payload = self.framing.max_length
        #: The hub this link's greenlets run in, and its loop's run_callback: set again by
        #: ``_start`` (a link is used from the thread that opened it, as any gevent object).
        self._hub = get_hub()
        self._run_callback: Callable[..., Any] = self._hub.loop.run_callback
        self._owner = threads.owner()  # the thread whose hub runs this link (set again by _start)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_socket(cls, sock: Any, spec: Spec, **options: Any) -> Connection:
        """A connection over an already connected (and, for TLS, wrapped) socket,
        started at once: the server side of a link."""
        try:
            peer = sock.getpeername()
            address: Address = (str(peer[0]), int(peer[1]))
        except OSError:
            address = ("0.0.0.0", 0)
        options.pop("tls", None)
        conn = cls(address, spec, **options)
        conn.server_side = True
        conn._start(sock)
        conn.ready = True
        if conn.on_established is not None:
            conn._spawn_handler(conn.on_established, conn)
        return conn

    def connect(self) -> Connection:
        """Dial, handshake TLS, start the loops and run ``on_connect`` (sign-on).

        Raises :class:`ConnectFailed`; the connection is then closed.
        """
        if self._state != NEW:
            raise errors.GevisoError(f"connect() on a {self._state} connection; build a new one")
        threads.check(self._owner, self)
        host, port = self.address
        self._state = CONNECTING
        raw: Any = None
        try:
            with gevent.Timeout(self.connect_timeout, ConnectFailed(f"connect to {host}:{port} timed out")):
                raw = socket.create_connection((host, port), timeout=self.connect_timeout)
                sock = raw
                if self.tls is not None:
                    name = self.server_hostname or getattr(self.tls, "server_hostname", None) or host
                    # The TLS socket owns the descriptor from here: close that one if the
                    # handshake fails or times out (gevent closes it only on OSError).
                    sock = raw = tls_wrap(raw, self.tls, server_hostname=name, handshake=False)
                    sock.do_handshake()
        except BaseException as exc:
            self._state = CLOSED
            self._closed_event.set()
            if raw is not None:
                raw.close()
            if isinstance(exc, ConnectFailed):
                raise
            if isinstance(exc, OSError):  # ssl.SSLError included
                raise ConnectFailed(f"connect to {host}:{port} failed: {exc}") from exc
            raise
        if self._state != CONNECTING:  # close() was called while we dialled
            sock.close()
            raise ConnectFailed(f"connection to {host}:{port} was closed while connecting")
        self._start(sock)
        log.info("link %s open", self)
        if self.on_connect is not None:
            try:
                self.on_connect(self)
            except BaseException as exc:
                self._fail(exc if isinstance(exc, Exception) else ConnectionClosed("on_connect interrupted"))
                if not isinstance(exc, Exception):
                    raise
                text = masking.mask_text(str(exc))
                if isinstance(exc, SendTimeout) and not self.stats.received:
                    # No frame back at all: more often a mismatch than a slow host.
                    text += f"; no frame came back: the host's framing or spec may not match ours ({self.framing.name})"
                raise ConnectFailed(f"on_connect for {host}:{port} failed: {type(exc).__name__}: {text}") from exc
        if self._state != OPEN:
            raise ConnectFailed(f"link to {host}:{port} closed during on_connect") from self._failure
        self.ready = True
        if self.on_established is not None:
            self._spawn_handler(self.on_established, self)
        return self

    def _start(self, sock: Any) -> None:
        try:
            sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        sock.settimeout(None)
        self._sock = sock
        #: Whether a sender may write a frame itself (see _write_now): on a plain gevent
        #: socket, whose send can be told not to wait (a TLS one's cannot).
        self._direct = type(sock) is socket.socket
        self._direct_turn = -1  # the loop iteration of the last such write (a loop that
        # counts none, libuv's, says -1 always: no direct writes there)
        self._hub = get_hub()
        self._run_callback = self._hub.loop.run_callback
        self._owner = threads.owner()
        self._state = OPEN
        self._last_read = self._last_write = time.monotonic()
        self._greenlets = [gevent.spawn(self._read_loop), gevent.spawn(self._write_loop)]
        if self.on_ping is not None or self.on_read_timeout is not None:
            self._greenlets.append(gevent.spawn(self._timer_loop))

    # -- state ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the link is closed or closing (no new sends)."""
        return self._state in (CLOSING, CLOSED)

    @property
    def state(self) -> str:
        """``new``, ``connecting``, ``open``, ``closing`` or ``closed``."""
        return self._state

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    @property
    def failure(self) -> Optional[BaseException]:
        """Why the link failed, or None (never opened, open, or closed by us)."""
        return self._failure

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """Block until the link is closed; False if ``timeout`` passed first."""
        return bool(self._closed_event.wait(timeout))

    def __repr__(self) -> str:
        host, port = self.address
        side = "server" if self.server_side else "client"
        return f"<geviso.Connection {side} {host}:{port} {self._state} in_flight={len(self._pending)}>"

    def __enter__(self) -> Connection:
        if self._state == NEW:
            self.connect()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------
    def _check_sendable(self) -> None:
        state = self._state
        if state == OPEN:
            return
        if state in (NEW, CONNECTING):
            raise NotConnected("the connection is not connected yet: call connect() first")
        if state == CLOSING and gevent.getcurrent() is self._closer:
            return  # on_close may still sign off
        raise ConnectionClosed(f"link is {state}") from self._failure

    def _check_writable(self) -> None:
        if self._state not in (OPEN, CLOSING):
            self._check_sendable()

    def send(self, doc: Mapping[str, str], *, timeout: Optional[float] = None) -> Message:
        """Send a request and return its response (a new dict).

        The caller's dict is not changed. Field 11 is filled from the STAN generator when
        missing. Raises :class:`SendTimeout`, :class:`ConnectionClosed` (``.sent`` tells
        whether the request may have reached the host), :class:`Rejected`,
        :class:`DuplicateKey`, :class:`EncodeError`, :class:`NotConnected` or
        :class:`WrongThread` (a link belongs to the thread that opened it).
        """
        if thread_ident() != self._owner:
            threads.check(self._owner, self)
        if self.listeners:
            return traced_send(self, self._send, self.listeners, doc, timeout)
        return self._send(doc, timeout)

    def _send(self, doc: Mapping[str, str], timeout: Optional[float] = None) -> Message:
        timeout = self.send_timeout if timeout is None else seconds(timeout, "timeout")
        if self._state != OPEN:
            self._check_sendable()
            if self._state == CLOSING:  # on_close's sign-off: within what is left of close()
                timeout = min(timeout, max(0.0, self._close_deadline - time.monotonic()))
        started = time.monotonic()
        slots = self._slots
        if slots is not None:
            if not slots.acquire(timeout=timeout):
                self.stats.timeouts += 1
                raise SendTimeout(f"no free in-flight slot within {timeout:g}s (max_in_flight={self.max_in_flight})")
        pending: Optional[_Pending] = None
        mti = "?"
        try:
            if slots is not None and self._state != OPEN:  # the link may have closed while we waited
                self._check_sendable()
            try:
                if "11" in doc:
                    msg = doc  # the codec reads it and leaves it as it was: no copy needed
                    req_key: Any = _NO_KEY
                else:
                    msg = dict(doc)
                    req_key = self._assign_stan(msg)
                if req_key is _NO_KEY:
                    try:
                        req_key = self.key(msg)
                    except KeyError as exc:
                        raise self._key_error(exc) from None
                in_flight = self._pending
                if req_key in in_flight:
                    raise DuplicateKey(f"a request with key {masking.mask_text(str(req_key))} is already in flight")
                payload = self.codec.encode(msg)
                pack = self._pack_header
                if pack is not None and len(payload) <= self._max_payload:
                    frame = pack(len(payload)) + payload  # _frame's usual case, inlined: a call less
                else:
                    frame = self._framed(payload)
                mti = msg["t"]  # encoded, so a str
            except GevisoError:
                raise
            except Exception as exc:  # not a mapping, an MTI the key function cannot read...
                raise self._bad_message(doc, exc) from exc
            entry = _Pending()
            deadline = started + timeout
            entry.key, entry.mti, entry.started, entry.sender = req_key, mti, started, None
            in_flight[req_key] = pending = entry  # from here on, the finally below removes it
            # Whether the reaper times it out is settled as it is filed, before _enqueue
            # may wait: the reaper relies on ``_pending``'s order being deadline order.
            reaped = deadline >= self._last_deadline
            if reaped:
                self._last_deadline = pending.deadline = deadline
                if deadline < self._reap_at:
                    self._arm_reaper(deadline)
            else:
                pending.deadline = -1.0
            outbox = self._outbox
            if outbox and self._outbox_bytes < self.max_write_buffer:
                # _enqueue's usual case, inlined: the writer is awake (it sleeps only on an
                # empty outbox) and there is room.
                outbox.append(frame)
                self._outbox_bytes += len(frame)
                self._queued = pending.seq = self._queued + 1  # its first seq: nothing yielded since it was filed
            else:
                pending.seq = 0  # not queued yet (_enqueue may wait)
                self._enqueue(frame, pending, deadline)
            if _LEVELS_SEEN.get(DEBUG, True) and log.isEnabledFor(DEBUG):  # see _LEVELS_SEEN
                log.debug("send %s on %s", masking.describe(msg), self)
            if reaped:
                if not pending.ready():
                    # Wait, however long: the reaper resolves it at its deadline. No Waiter,
                    # link or timer per request; resolve() switches back here (measured
                    # 0.8 us a request less than wait_done, 0.5 us less than get()).
                    pending.sender = getcurrent()
                    hub = self._hub
                    try:
                        # Only _wake_senders switches in with ``pending``, once it is
                        # resolved (and it clears ``sender``); anything else switching in is
                        # ignored. The identity test saves a ready() call per wake-up.
                        while hub.switch() is not pending:
                            pass
                    except BaseException:
                        pending.sender = None  # killed, or a gevent.Timeout: no wake-up may switch in
                        raise
            else:
                # A loop timer may fire a hair before time.monotonic() reaches the
                # deadline: wait out the rest, never time out early.
                while not pending.wait_done(deadline - time.monotonic()):
                    if time.monotonic() >= deadline:
                        self._expire(pending, timeout)
                        break
            response: Message = pending.get()  # resolved: its value, or its error raised; one call
            return response
        except GevisoError as exc:
            if pending is not None:
                self.stats.record(mti, type(exc).__name__, time.monotonic() - started)
            raise
        finally:
            if pending is not None:
                in_flight = self._pending
                del in_flight[req_key]  # its own entry: only this removes it, and keys are unique
                if not in_flight:
                    self._idle.set()
                    self._last_deadline = -INF  # nothing watched: any deadline is in order
            if slots is not None:
                slots.release()

    def _assign_stan(self, msg: dict[str, str]) -> Any:
        """Put the next STAN whose key is neither in flight nor timed out recently in
        ``msg`` (the send's own copy) and return that key, or ``_NO_KEY`` when the key
        function cannot key it.

        A timed-out key is skipped for as long as a late answer to it is recognised as
        late (see :meth:`_remember_timeout`): once the counter wraps, that late answer
        must not resolve a new request. A key that does not change with the STAN (e.g.
        ``keys.fields("41")``) and is in flight is a :class:`DuplicateKey` after one STAN.
        """
        pending, timed_out, stan = self._pending, self._timed_out, self.stan
        msg["11"] = stan.next()
        try:
            candidate = self.key(msg)
        except (KeyError, TypeError):
            return _NO_KEY  # send() calls the key function again and reports it
        if candidate not in pending and candidate not in timed_out:
            return candidate  # the usual case, first time
        return self._next_free_stan(msg, candidate)

    def _next_free_stan(self, msg: dict[str, str], candidate: Hashable) -> Any:
        """:meth:`_assign_stan` once its first STAN's key is taken."""
        pending, timed_out, stan = self._pending, self._timed_out, self.stan
        # Each key in flight or timed out rules out at most one STAN (if keys differ by STAN).
        for _ in range(min(len(pending) + len(timed_out) + 1, MAX_STAN)):
            if candidate not in pending:
                if candidate not in timed_out or not self._key_follows_stan(msg, candidate):
                    return candidate  # (no other STAN would give another key)
            elif not self._key_follows_stan(msg, candidate):
                raise DuplicateKey(f"a request with key {masking.mask_text(str(candidate))} is already in flight")
            msg["11"] = stan.next()
            try:
                candidate = self.key(msg)
            except (KeyError, TypeError):
                return _NO_KEY
        raise LocalProtocolError("no free STAN: every one is in flight or recently timed out")

    def _key_follows_stan(self, msg: dict[str, str], candidate: Hashable) -> bool:
        """Whether another STAN gives ``msg`` another key (it does for keys with field
        11); tried on a copy, without taking a STAN from the generator."""
        other = dict(msg)
        other["11"] = "000000" if msg["11"] != "000000" else "000001"
        try:
            return bool(self.key(other) != candidate)
        except Exception:
            return True

    def _bad_message(self, doc: Any, exc: Exception) -> errors.EncodeError:
        """The :class:`EncodeError` for a message that failed before encoding (not a
        mapping, an MTI the key function cannot read): which field, what was expected."""
        reason = explain(doc, self.spec)
        if reason:
            err = errors.EncodeError(f"cannot encode message: {reason}")
        else:
            err = errors.EncodeError(f"cannot build the request key: the key function raised {type(exc).__name__}")
        err.__cause__ = exc
        return err

    def _expire(self, pending: _Pending, timeout: float) -> None:
        """Time out a request still waiting: it raises :class:`SendTimeout`, a late
        response to it is counted as late."""
        if not pending.seq:  # still waiting for room in the write buffer (see _enqueue)
            error = SendTimeout(f"write buffer stayed full for {timeout:g}s: the peer is not reading")
        else:
            error = SendTimeout(f"no response within {timeout:g}s")
        if pending.resolve(exc=error):
            self.stats.timeouts += 1
            if pending.seq:  # queued, so it may reach the peer: an answer may come late
                self._remember_timeout(pending.key)

    def _arm_reaper(self, at: float) -> None:
        """Have :meth:`_reap` run at monotonic time ``at`` (instead of when it was due)."""
        self._disarm_reaper()
        # after, repeat, ref, priority, as in wait_done
        self._reaper = self._hub.loop.timer(max(0.0, at - time.monotonic()), 0.0, True, -1)
        self._reap_at = at
        self._reaper.start(self._reap, update=True)

    def _disarm_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.close()
            self._reaper, self._reap_at = None, INF

    def _reap(self) -> None:
        """Time out every watched request whose deadline has passed, then sleep until the
        next deadline. Runs in the hub, at most once per deadline reached, not per request.

        The watched requests are in deadline order among ``_pending``'s values, so the scan
        stops at the first one not due; answered ones waiting for their sender to take
        the answer are passed by, as are those with a timer of their own.
        """
        self._disarm_reaper()
        now = time.monotonic()
        for pending in self._pending.values():
            deadline = pending.deadline
            if deadline > now:
                self._arm_reaper(deadline)
                return
            if deadline >= 0.0 and not pending.ready():
                self._expire(pending, deadline - pending.started)  # its own send timeout

    def _remember_timeout(self, req_key: Hashable) -> None:
        """Keep the keys of recent timeouts, so a late response is counted as late."""
        timed_out = self._timed_out
        timed_out[req_key] = None
        if len(timed_out) > LATE_KEYS_KEPT:
            del timed_out[next(iter(timed_out))]

    @staticmethod
    def _key_error(exc: KeyError) -> LocalProtocolError:
        """The error for a request its key function cannot key (a field is missing)."""
        field = exc.args[0] if exc.args else "?"
        what = "STAN is missing" if field == "11" else f"field {field} is missing"
        return LocalProtocolError(f"cannot build the request key: {what}")

    def _frame(self, msg: Mapping[str, str], tpdu: Optional[bytes] = None) -> bytes:
        payload = self.codec.encode(msg)
        pack = self._pack_header
        if pack is not None and tpdu is None and len(payload) <= self._max_payload:
            return pack(len(payload)) + payload  # framing.encode for a plain binary length, inlined
        return self._framed(payload, tpdu)

    def _framed(self, payload: bytes, tpdu: Optional[bytes] = None) -> bytes:
        """``payload`` framed by the link's framing (an :class:`EncodeError` if it cannot be)."""
        try:
            return self.framing.encode(payload, tpdu=tpdu)
        except errors.FramingError as exc:
            raise errors.EncodeError(str(exc)) from exc

    def reply(self, doc: Mapping[str, str], *, to: Optional[Mapping[str, str]] = None) -> None:
        """Write a message with no tracking: the answer to a request from the peer.

        With TPDU framing, the reply carries the TPDU of the request it answers with
        source and destination swapped: ``to``'s (the request as ``on_inbound`` got it),
        else ``doc``'s own if it is a received message, else the last TPDU received
        (right only when answering at once, in order). Allowed while the link is
        closing, so answers to requests already received still go out.
        """
        self._check_writable()
        if thread_ident() != self._owner:  # the check inlined: every answer of a host comes here
            threads.check(self._owner, self)
        tpdu = getattr(to if to is not None else doc, "tpdu", None)
        if tpdu is None and to is None:
            tpdu = self._decoder.last_tpdu
        frame = self._frame(doc, Framing.swap_tpdu(tpdu) if tpdu is not None else None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("reply %s on %s", masking.describe(doc), self)
        self._enqueue(frame, None, time.monotonic() + self.send_timeout)
        self.stats.replies += 1

    def write(self, raw: bytes) -> None:
        """Write raw bytes (already framed) through the single writer, between frames."""
        self._check_writable()
        threads.check(self._owner, self)
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise errors.LocalProtocolError(f"write() takes bytes (a framed message), not {type(raw).__name__}")
        self._enqueue(bytes(raw), None, time.monotonic() + self.send_timeout)

    def reject(self, doc: Mapping[str, str], reason: Any = None) -> bool:
        """Fail the pending send with ``doc``'s key with :class:`Rejected` (e.g. on a 0620
        reject advice). False when no such request is pending."""
        try:
            pending = self._pending.get(self.key(doc))
        except KeyError:
            return False
        if pending is None or not pending.resolve(exc=Rejected(reason)):
            return False
        self.stats.rejects += 1
        return True

    def _enqueue(self, frame: bytes, pending: Optional[_Pending], deadline: float) -> None:
        """Queue a frame for the writer; while the queue is over ``max_write_buffer``
        wait for the writer to take it (backpressure), until ``deadline``."""
        while self._outbox_bytes >= self.max_write_buffer and self._state != CLOSED:
            self._drained.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                queued = self._outbox_bytes
                self.stats.timeouts += 1
                raise SendTimeout(f"write buffer stayed full ({queued} bytes queued): the peer is not reading")
            self._drained.wait(left)
            if pending is not None and pending.ready():
                return  # timed out by the reaper, or the link failed, while it waited
        if self._state == CLOSED:
            raise ConnectionClosed("link closed") from self._failure
        outbox = self._outbox
        if not outbox:
            if self._direct and self._flushed.is_set():
                turn = self._hub.loop.iteration
                if turn != self._direct_turn:
                    self._direct_turn = turn
                    self._write_now(frame, pending)
                    return
            # The writer waits only with an empty outbox and takes the whole of it, so
            # only the first frame of a batch needs to wake it (and to un-flush).
            self._flushed.clear()
            self._wake_writer.set()
        outbox.append(frame)
        self._outbox_bytes += len(frame)
        self._queued += 1
        if pending is not None:
            pending.seq = self._queued

    def _write_now(self, frame: bytes, pending: Optional[_Pending]) -> None:
        """Write a frame from the sender itself, the writer being idle with nothing queued
        (so no other frame is being written): saves waking the writer greenlet and a
        switch to it and back, for the first frame of a link in a loop iteration (the
        frames sent after it in the same iteration still go out together, from the
        writer). Never waits: what the socket does not take now goes to the writer,
        first in its queue."""
        self._queued = seq = self._queued + 1
        if pending is not None:
            pending.seq = seq
        self._taken = seq  # from here on, it may reach the peer
        try:
            sent = self._sock.send(frame, 0, 0.0)  # timeout 0: raises rather than waits
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc)  # a pending send sees ConnectionClosed(sent=True)
            return
        if sent < len(frame):
            rest = frame[sent:] if sent else frame
            self._outbox.append(rest)
            self._outbox_bytes += len(rest)
            self._flushed.clear()
            self._wake_writer.set()  # it counts the frame as sent once it wrote the rest
            return
        self._last_write = time.monotonic()
        self.stats.sent += 1

    # -- the loops --------------------------------------------------------------------
    def _write_loop(self) -> None:
        sock = self._sock
        wake = self._wake_writer
        flushed = self._flushed
        try:
            while self._state != CLOSED:
                batch = self._outbox
                if not batch:
                    flushed.set()
                    wake.wait()
                    wake.clear()
                    continue
                self._outbox = []
                self._outbox_bytes = 0
                self._taken = self._queued  # from here on, these requests may reach the peer
                self._drained.set()
                # Every frame queued since the last write, in one call.
                _send_all(sock, b"".join(batch))  # one frame: that frame itself, no copy
                self._last_write = time.monotonic()
                self.stats.sent += len(batch)
        except OSError as exc:  # ssl.SSLError included
            self._fail(exc)
        except Exception as exc:
            self._loop_crashed("writer", exc)
        except BaseException as exc:  # noqa: B036 - killed: failed below, then re-raised
            self._loop_stopped("writer", exc)

    def _read_loop(self) -> None:
        sock = self._sock
        decoder = self._decoder
        handle = self._handle_frames
        # A recv that came back short found the kernel's buffer empty: the next one would
        # fail with EAGAIN (a system call and an exception, 1.7-3 us) before waiting, so
        # wait for the socket to be readable first. Only for a plain gevent socket: a TLS
        # one returns a record per recv and cannot say whether the kernel holds more.
        wait_readable = getattr(sock, "_wait", None) if type(sock) is socket.socket else None
        short = False
        try:
            while True:
                if short and wait_readable is not None:
                    if self._state == CLOSED:
                        return
                    wait_readable(sock._read_event)
                data = sock.recv(RECV_SIZE)
                if not data:
                    self._peer_closed()
                    return
                short = len(data) < RECV_SIZE
                payloads = decoder.feed(data)
                if payloads or decoder.keepalives != self.stats.keepalives:
                    # A whole message or keep-alive is a sign of life, a byte is not (moov's
                    # read timeout): a peer trickling a frame (slowloris) still times out.
                    self._last_read = time.monotonic()
                debug = log.isEnabledFor(logging.DEBUG)  # once per recv, not per frame
                count = len(payloads)
                self.stats.received += count
                if count <= READ_BATCH:
                    handle(payloads, debug)
                else:
                    every = max(READ_BATCH, count // READ_PARTS)
                    for first in range(0, count, every):
                        if first:
                            gevent.sleep(0)  # answered senders and the writer go first: see READ_BATCH
                        handle(payloads[first : first + every], debug)
                self.stats.keepalives = decoder.keepalives
                if decoder.error is not None:  # frames before a bad header were delivered first
                    raise decoder.error
        except errors.FramingError as exc:
            self._report(exc)
            self._fail(exc)
        except OSError as exc:  # ssl.SSLError included
            self._fail(exc)
        except Exception as exc:
            self._loop_crashed("reader", exc)
        except BaseException as exc:  # noqa: B036 - killed, or e.g. gevent.Timeout from an inline handler
            self._loop_stopped("reader", exc)

    def _loop_stopped(self, loop: str, exc: BaseException) -> None:
        """The reader or writer ended by a BaseException: our own kill when the link
        closed, else (a kill from elsewhere, a ``gevent.Timeout`` escaping an inline
        ``on_inbound``) the link fails at once rather than stay open with nobody reading
        or writing. Exceptions meant for the process (SystemExit, KeyboardInterrupt)
        are re-raised."""
        if self._state != CLOSED:
            log.error("%s of %s stopped: %s", loop, self, type(exc).__name__)
            failure = ConnectionClosed(f"link failed: its {loop} stopped ({type(exc).__name__})")
            failure.__cause__ = exc
            self._fail(failure)
        if not isinstance(exc, (gevent.GreenletExit, gevent.Timeout)):
            raise exc

    def _loop_crashed(self, loop: str, exc: Exception) -> None:
        """A bug, not the network (e.g. a key function raising): fail the link rather
        than hang it. No traceback is logged: its last line is the exception's text,
        which may quote a message; ``on_error`` gets the exception itself."""
        log.error("%s of %s failed: %s: %s", loop, self, type(exc).__name__, masking.mask_text(str(exc)))
        self._report(exc)
        self._fail(exc)

    def _handle_frames(self, payloads: Sequence[bytes], debug: bool) -> None:
        """Decode each frame and hand a response to the send waiting for it: the path
        every response takes, so it is inlined here, with what it needs looked up once
        per ``recv``. Anything else goes to :meth:`_handle_other`."""
        stats = self.stats
        decode = self._decode_tpdu if self._tpdu_frames else self.codec.decode
        key = self.key
        waiting = self._pending
        resolved: list[_Pending] = []  # their senders are woken together, after the loop
        try:
            for payload in payloads:
                try:
                    doc = decode(payload)
                except errors.DecodeError as exc:
                    stats.errors += 1
                    self._report(exc)
                    continue
                mti = doc.get("t", "")
                if debug:
                    log.debug("recv %s on %s", masking.describe(doc), self)
                if not (len(mti) >= 3 and mti[2] in "13579"):  # not is_response(mti): inlined
                    self._handle_other(doc, False, None)
                    continue
                try:
                    resp_key: Optional[Hashable] = key(doc)
                except Exception:  # no key in this response: it cannot match, so it is unmatched
                    resp_key = None
                pending = waiting.get(resp_key)
                if pending is not None and not pending.ready():
                    pending.set(doc)  # resolve(), inlined
                    resolved.append(pending)
                else:
                    self._handle_other(doc, True, resp_key)
        finally:
            if resolved:
                stats.matched += len(resolved)
                stats.record_answered(resolved, time.monotonic())
                self._run_callback(_wake_senders, resolved)

    def _decode_tpdu(self, payload: bytes) -> Message:
        """Decode a payload that starts with its TPDU; the message keeps it as ``.tpdu``."""
        doc = Received(self.codec.decode(payload[TPDU_SIZE:]))
        doc.tpdu = payload[:TPDU_SIZE]
        return doc

    def _handle_other(self, doc: Message, response: bool, resp_key: Optional[Hashable]) -> None:
        """A request from the peer, or a response no send is waiting for (late or stray)."""
        stats = self.stats
        late = False
        if response:
            stats.unmatched += 1
            late = resp_key in self._timed_out
            if late:
                del self._timed_out[resp_key]
                stats.late += 1
        else:
            stats.inbound += 1
        if self.on_inbound is not None:
            if self.inline_inbound:
                self._run_handler(self.on_inbound, self, doc)
            else:
                self._dispatch_inbound(doc)
        elif response:
            if late and self.on_error is None:  # counted in stats.late; no log line per message
                log.debug("late response %s on %s", masking.describe(doc), self)
            else:
                self._report(errors.RemoteProtocolError(f"unmatched response {masking.describe(doc)}"))
        else:
            self._report(errors.RemoteProtocolError(f"unhandled request {masking.describe(doc)} (no on_inbound)"))

    def _dispatch_inbound(self, doc: Message) -> None:
        """Queue a request for ``on_inbound``'s workers and wake one, unless one is on its
        way already. A worker runs request after request while its handler does not block,
        and wakes another before each handler it runs while requests are still queued, so
        a blocking handler never holds up the next request; up to ``max_inbound`` run at
        once. Reusing workers saves a greenlet spawn per request (and for handlers that
        answer at once, the switch to it: one worker takes a whole ``recv``). When
        ``max_inbound`` requests wait, the reader waits too (pushing back through TCP)."""
        inbox = self._inbox
        inbox.append(doc)
        if self._spare is None:
            self._add_worker()
        if len(inbox) >= self._max_inbound:
            room = self._inbox_room
            while len(inbox) >= self._max_inbound and self._state != CLOSED:
                room.clear()
                self._inbox_full = True
                room.wait()

    def _add_worker(self) -> None:
        """Wake a parked worker, or start one below ``max_inbound``; else every worker is
        busy, and the first to finish takes the next request."""
        if self._parked:
            self._spare = waiter = self._parked.pop()
            self._run_callback(waiter.switch, None)
        elif self._workers < self._max_inbound:
            self._spare = waiter = Waiter(self._hub)
            self._workers += 1
            gevent.spawn(self._inbound_worker, waiter)

    def _inbound_worker(self, waiter: Waiter) -> None:
        """Run ``on_inbound`` for queued requests, then park until woken for more (or end,
        when the link is closed or enough workers are parked already)."""
        inbox = self._inbox
        run = self._run_spawned
        try:
            while True:  # ``waiter`` is reused: parked again after each wake-up
                self._spare = None  # running: the next wake-up is another worker's
                while inbox:
                    doc = inbox.popleft()
                    if self._inbox_full and len(inbox) < self._max_inbound:
                        self._inbox_full = False
                        self._inbox_room.set()
                    if inbox and self._spare is None:
                        self._add_worker()  # for the next request, should this handler block
                    handler = self.on_inbound
                    if handler is not None:
                        run(handler, self, doc)
                if self._state == CLOSED or len(self._parked) >= PARKED_WORKERS:
                    return
                self._parked.append(waiter)
                waiter.get()
        finally:  # ended, or killed (in a handler, parked, or before it ran)
            self._workers -= 1
            if waiter in self._parked:
                self._parked.remove(waiter)
            if self._spare is waiter:
                self._spare = None
            if inbox and self._spare is None and self._state != CLOSED:
                self._add_worker()  # the requests queued still run

    def _timer_loop(self) -> None:
        """Idle pings and read timeouts; neither closes the link by itself."""
        idle_due = self._last_write + self.idle_time
        read_due = self._last_read + self.read_timeout
        while self._state in (OPEN, CLOSING):
            now = time.monotonic()
            if self.on_ping is not None:
                idle_due = max(idle_due, self._last_write + self.idle_time)
                if now >= idle_due:
                    if self._ping_greenlet is None or self._ping_greenlet.dead:
                        self._ping_greenlet = self._spawn_handler(self.on_ping, self)
                    idle_due = now + self.idle_time
            else:
                idle_due = float("inf")
            if self.on_read_timeout is not None:
                read_due = max(read_due, self._last_read + self.read_timeout)
                if now >= read_due:
                    self._spawn_handler(self.on_read_timeout, self)
                    read_due = now + self.read_timeout
            else:
                read_due = float("inf")
            gevent.sleep(min(max(0.001, min(idle_due, read_due) - time.monotonic()), 1.0))

    # -- handlers and errors ----------------------------------------------------------
    def _spawn_handler(self, handler: Handler, *args: Any) -> gevent.Greenlet:
        return gevent.spawn(self._run_spawned, handler, *args)

    def _run_spawned(self, handler: Handler, *args: Any) -> None:
        """:meth:`_run_handler` in a greenlet of its own, where a ``BaseException``
        (e.g. a ``gevent.Timeout`` the handler let escape) is reported too: gevent
        would print the greenlet's arguments, a message with its PAN. Inline, such an
        exception stops the reader instead, which fails the link."""
        try:
            self._run_handler(handler, *args)
        except (gevent.GreenletExit, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: B036 - reported, not printed with the message
            self.stats.errors += 1
            if handler is self.on_error:  # not to itself again
                log.error("on_error handler of %s failed: %s", self, type(exc).__name__)
                return
            failure = errors.GevisoError(f"{getattr(handler, '__name__', 'handler')} raised {type(exc).__name__}")
            failure.__cause__ = exc
            self._report(failure)

    def _run_handler(self, handler: Handler, *args: Any) -> None:
        """Run a user handler; nothing escapes, since gevent would print the greenlet's
        arguments (a message, PAN included) for an uncaught exception."""
        try:
            handler(*args)
        except gevent.GreenletExit:
            raise
        except ConnectionClosed as exc:
            if self._state in (CLOSING, CLOSED):
                # The link went away under the handler (a reply or ping racing the close):
                # on_closed / on_failed tell that story, so this is no extra error.
                name = getattr(handler, "__name__", "handler")
                log.info("%s: %s ended by the close: %s", self, name, masking.mask_text(str(exc)))
            else:
                self._handler_failed(handler, exc)
        except Exception as exc:
            self._handler_failed(handler, exc)

    def _handler_failed(self, handler: Handler, exc: Exception) -> None:
        """Report a handler's error to ``on_error`` (or the log), safely."""
        self.stats.errors += 1
        name = getattr(handler, "__name__", "handler")
        err = errors.GevisoError(f"{name} raised {type(exc).__name__}")
        err.__cause__ = exc
        if handler is self.on_error:
            log.error("on_error handler of %s failed: %s", self, type(exc).__name__)
        else:
            self._report(err)

    def _report(self, exc: BaseException) -> None:
        """Hand an error no caller can receive to ``on_error``, or log it safely: at
        most one WARNING line per link per interval (the peer can repeat most of these
        at will: bad frames, stray responses), the rest at DEBUG and counted in it."""
        if self.on_error is not None:
            self._spawn_handler(self.on_error, exc)
        else:
            self._warnings.warning(self, masking.mask_text(str(exc)))

    # -- closing ----------------------------------------------------------------------
    def close(self, timeout: Optional[float] = None) -> None:
        """Close gracefully; idempotent.

        Refuses new sends, runs ``on_close`` (which may still send a sign-off), waits up
        to ``timeout`` (default ``send_timeout``) for in-flight sends, flushes the writer,
        closes the socket, then runs ``on_closed``. An ``on_close`` error is raised after
        the link is closed, never swallowed.
        """
        timeout = optional_seconds(timeout, "timeout")
        state = self._state
        if state == NEW:
            raise NotConnected("close() before connect(): there is no link to close")
        threads.check(self._owner, self)
        if state == CONNECTING:  # connect() sees this when its dial returns, and gives up
            self._state = CLOSED
            self._closed_event.set()
            return
        if state != OPEN:
            if gevent.getcurrent() is not self._closer:
                self._closed_event.wait(timeout)
            return
        self._state = CLOSING
        self._closer = gevent.getcurrent()
        log.info("closing link %s", self)
        if timeout is None:
            timeout = self.send_timeout
        deadline = self._close_deadline = time.monotonic() + timeout
        try:
            if self.on_close is not None:
                # Its sends wait at most until the deadline (see _send); the timer bounds
                # whatever else it might wait for.
                expired = errors.SendTimeout(f"on_close did not finish within close's {timeout:g}s")
                try:
                    with gevent.Timeout(max(0.0, deadline - time.monotonic()), expired):
                        self.on_close(self)
                except Exception as exc:  # our timer's SendTimeout included
                    self._close_error = exc
            self._closer = None
            if self._pending:
                self._idle.clear()
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            # Let the writer flush what is queued (replies, a last frame) before the socket goes.
            if self._state == CLOSING:
                self._flushed.wait(max(0.0, deadline - time.monotonic()))
        finally:
            self._shutdown(ConnectionClosed("link closed by us"), failed=False)
        if self._close_error is not None:
            raise errors.GevisoError(f"on_close raised {type(self._close_error).__name__}") from self._close_error

    def fail(self, reason: Union[str, BaseException] = "failure triggered") -> None:
        """Fail the link now (moov's ``TriggerFailure``): every pending send raises
        :class:`ConnectionClosed` at once, ``on_failed`` and ``on_closed`` run."""
        self._fail(reason if isinstance(reason, BaseException) else ConnectionClosed(str(reason)))

    trigger_failure = fail

    def _peer_closed(self) -> None:
        if self._state == CLOSED:
            return
        lost_work = bool(self._pending)
        log.info("link %s closed by peer", self)
        unread = self._decoder.buffered
        if unread:
            self._report(errors.RemoteProtocolError(f"peer closed the link in the middle of a frame ({unread} bytes)"))
        exc = ConnectionClosed("link closed by peer")
        if lost_work:
            self._fail(exc)
        else:
            self._shutdown(exc, failed=False)

    def _fail(self, exc: BaseException) -> None:
        if self._state == CLOSED:
            return
        if self._failure is None:
            self._failure = exc
        log.info("link %s failed: %s", self, masking.mask_text(str(exc)) or type(exc).__name__)
        self._shutdown(exc, failed=True)

    def _nothing_read(self) -> bool:
        """True while the peer has sent no frame, keep-alive or part of one."""
        stats = self.stats
        return not (stats.received or stats.keepalives or self._decoder.buffered)

    def _shutdown(self, exc: BaseException, *, failed: bool) -> None:
        """Close the socket, fail whatever is pending, stop the loops, run handlers."""
        if self._state == CLOSED:
            return
        self._state = CLOSED
        self.ready = False
        taken = self._taken
        if isinstance(exc, ConnectionClosed):
            closed_exc = exc
        elif isinstance(exc, ssl.SSLError):
            reason = masking.escape(exc.reason or type(exc).__name__, masking.ESCAPE_LIMIT)
            closed_exc = ConnectionClosed(f"link failed: TLS error {reason}")
            if "ALERT" in str(exc.reason) and self._nothing_read():
                # A TLS 1.3 host refuses a client certificate after our half of the
                # handshake: its alert comes before any answer, and it processed nothing.
                taken = 0
        else:
            closed_exc = ConnectionClosed(f"link failed: {type(exc).__name__}")
        for pending in list(self._pending.values()):
            err = ConnectionClosed(str(closed_exc), sent=0 < pending.seq <= taken)
            err.__cause__ = exc
            pending.resolve(exc=err)
        self._disarm_reaper()
        self._outbox, self._outbox_bytes = [], 0  # never to be written: nothing kept
        self._idle.set()
        self._drained.set()
        self._wake_writer.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        current = gevent.getcurrent()
        for g in self._greenlets:
            if g is not current and not g.dead:
                g.kill(block=False)
        parked, self._parked = self._parked, []
        for waiter in parked:  # idle workers end (busy ones finish their requests first)
            self._run_callback(waiter.switch, None)
        self._closed_event.set()
        self._warnings.flush(self)
        if failed and self.on_failed is not None:
            self._spawn_handler(self.on_failed, self, exc)
        if self.on_closed is not None:
            self._spawn_handler(self.on_closed, self)
