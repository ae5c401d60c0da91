"""The host side: accept links and serve each as a server-side :class:`Connection`.

:class:`Server` is a ``gevent.server.StreamServer`` whose every accepted socket (after
the TLS handshake, when ``tls`` is given) becomes ``Connection.from_socket(...)`` with
the server's connection options. So matching, pings, handlers and close semantics work
server side too, and the host can ``send()`` to a connected client (sign-on, echo).
"""

from __future__ import annotations

import logging
import socket as _stdlib_socket
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import gevent
import gevent.event
import gevent.server
from gevent import socket

from . import masking, options, threads
from .codec import Spec, codec_for
from .connection import Address, Connection, Handler, close_quietly, parse_address
from .errors import ConfigurationError, ConnectFailed, GevisoError, TooManyConnections
from .framing import FramingLike
from .framing import resolve as resolve_framing
from .metrics import LinkStats, Totals
from .options import seconds
from .ratelog import SummaryLog
from .tls import wrap as tls_wrap

log = logging.getLogger(__name__)

#: Links a server holds at once unless told otherwise.
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds a client has to complete the TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def _peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class Server(gevent.server.StreamServer):  # type: ignore[misc]
    """Accepts ISO 8583 links; each one is a server-side :class:`Connection`.

    ``on_inbound(conn, doc)`` answers the client's requests with
    ``conn.reply(answer, to=doc)`` (the answer carries the request's own TPDU).
    Every other keyword goes to each link's :class:`Connection` (``send_timeout``,
    ``key``, ``on_closed``, ``on_error``...). ``on_error(exc)`` also hears what no link
    can report: a refused socket (over ``max_connections``) or a failed TLS handshake.
    A clean close by the peer is not an error. ``reuse_port`` sets ``SO_REUSEPORT`` so
    several processes can share one port.
    """

    def __init__(
        self,
        address: Address,
        spec: Spec,
        *,
        framing: FramingLike = None,
        tls: Optional[ssl.SSLContext] = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        on_inbound: Optional[Handler] = None,
        on_error: Optional[Handler] = None,
        on_closed: Optional[Handler] = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        reuse_port: bool = False,
        backlog: Optional[int] = None,
        **connection_options: Any,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        options.instance(spec, Mapping, "spec", "a pyiso8583 spec (a dict of fields)")
        options.optional_instance(tls, ssl.SSLContext, "tls", "an ssl.SSLContext (see geviso.tls) or None")
        for name, value in (("on_inbound", on_inbound), ("on_error", on_error), ("on_closed", on_closed)):
            options.handler(value, name)
        super().__init__(parse_address(address), backlog=options.optional_whole(backlog, "backlog", low=1))
        self.spec = spec
        self.framing = resolve_framing(framing)
        self.tls = tls
        self.max_connections = max_connections
        self.on_error = on_error
        self.on_closed = on_closed
        self.handshake_timeout = seconds(handshake_timeout, "handshake_timeout", positive=True)
        self.reuse_port = reuse_port
        #: Stats of every link this server ever accepted, summed (see :meth:`link_stats`).
        self.totals = Totals()
        self._warnings = SummaryLog(log)
        #: Sockets accepted, and sockets refused over ``max_connections``.
        self.accepted = 0
        self.refused = 0
        connection_options.setdefault("codec", codec_for(spec))  # one codec for every link
        #: Requests read after :meth:`stop` began, left unhandled (their clients' sends
        #: fail with ``ConnectionClosed(sent=True)`` when the link closes).
        self.unhandled_on_stop = 0
        self._on_inbound = on_inbound
        self._running = 0  # inbound handlers running now (not inline ones: they never block)
        self._handlers: set[gevent.Greenlet] = set()  # ...and their greenlets
        self._handlers_done = gevent.event.Event()
        self._handlers_done.set()
        # Inline handlers run in the reader and never block, so stop() has none to wait
        # for; every other one is counted, so stop() can let it answer first.
        inline = bool(connection_options.get("inline_inbound", False))
        self._options = dict(
            connection_options,
            framing=self.framing,
            on_inbound=on_inbound if on_inbound is None or inline else self._handle_request,
            on_error=on_error,
            on_closed=self._link_closed,
        )
        self._links: dict[Connection, float] = {}  # link -> monotonic time it opened
        self._handshakes: set[gevent.Greenlet] = set()
        self._no_links = gevent.event.Event()  # set whenever _links is empty
        self._no_links.set()
        self._stopping = False
        self._owner = threads.owner()
        # Every link's options checked now (building a link does no I/O), not at the
        # first accept, where a bad one would fail each link in turn.
        Connection(("127.0.0.1", 0), spec, **self._options)

    # -- what users read ----------------------------------------------------------------
    @property
    def connections(self) -> set[Connection]:
        """The links open now; a link leaves this set the moment it is closed."""
        return {conn for conn in self._links if conn.state != "closed"}

    def link_stats(self) -> LinkStats:
        """The :class:`~geviso.metrics.LinkStats` of every link ever accepted, summed."""
        return self.totals.stats()

    def send_all(
        self, doc: dict[str, str], *, timeout: Optional[float] = None, links: Optional[Iterable[Connection]] = None
    ) -> dict[Connection, Any]:
        """Send ``doc`` to every connected client (or to ``links``) at once; each link
        maps to its response or the error it raised."""
        links = list(self.connections if links is None else links)
        jobs = [gevent.spawn(_send_or_error, conn, doc, timeout) for conn in links]
        gevent.joinall(jobs)
        return {conn: (job.value if job.successful() else job.exception) for conn, job in zip(links, jobs)}

    def __repr__(self) -> str:
        return f"<geviso.Server {_peer(self.address)} links={len(self.connections)}>"

    # -- starting -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind (unless given a socket) and start accepting links."""
        self._owner = threads.owner()
        self._stopping = False
        super().start()

    def init_socket(self) -> None:
        """Bind the listener ourselves when ``SO_REUSEPORT`` is asked for."""
        if self.reuse_port and not hasattr(self, "socket"):
            self.set_listener(_reuse_port_listener(self.address, self.backlog, self.family))
        super().init_socket()

    def handle(self, sock: Any, address: Any) -> None:
        """One accepted socket: refuse it over the limit, handshake TLS, start its link."""
        peer = _peer(address)
        if self._stopping:
            sock.close()
            return
        if len(self.connections) + len(self._handshakes) >= self.max_connections:
            self.refused += 1
            sock.close()
            self._report(TooManyConnections(f"link from {peer} refused: {self.max_connections} links open already"))
            return
        self.accepted += 1
        if self.tls is not None:
            current = gevent.getcurrent()
            self._handshakes.add(current)
            try:
                sock = tls_wrap(sock, self.tls, server_side=True, handshake=False)
                with gevent.Timeout(self.handshake_timeout, ConnectFailed(f"TLS handshake with {peer} timed out")):
                    sock.do_handshake()
            except ConnectFailed as exc:
                sock.close()
                self._report(exc)
                return
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                err = ConnectFailed(f"TLS handshake with {peer} failed: {exc}")
                err.__cause__ = exc
                self._report(err)
                return
            except BaseException:  # killed by stop()
                sock.close()
                raise
            finally:
                self._handshakes.discard(current)
            if self._stopping:
                sock.close()
                return
        conn = Connection.from_socket(sock, self.spec, **self._options)
        self._links[conn] = time.monotonic()
        self._no_links.clear()
        self.totals.track(conn)
        self._link_opened(conn, peer)
        log.debug("link from %s open", peer)

    def _link_opened(self, conn: Connection, peer: str) -> None:
        """Hook: a link from ``peer`` opened (MockHost numbers its links)."""

    def do_close(self, sock: Any, *args: Any) -> None:
        """The accepted socket lives on in its Connection: do not close it here."""

    # -- links ----------------------------------------------------------------------------
    def _link_closed(self, conn: Connection) -> None:
        opened = self._links.pop(conn, None)
        self._link_gone(conn)
        if not self._links:
            self._no_links.set()
        s = conn.stats
        how = f"failed ({type(conn.failure).__name__})" if conn.failure is not None else "closed"
        age = time.monotonic() - opened if opened is not None else 0.0
        log.info(
            "link from %s %s after %.1fs: %d received, %d replies, %d sent",
            _peer(conn.address),
            how,
            age,
            s.received,
            s.replies,
            s.sent,
        )
        if self.on_closed is not None:
            self.on_closed(conn)

    def _link_gone(self, conn: Connection) -> None:
        """Hook: a link closed."""

    def _handle_request(self, conn: Connection, doc: Any) -> None:
        """``on_inbound`` of every link (unless inline): counted while it runs, so
        :meth:`stop` waits for it; once stopping, new requests are left unhandled."""
        if self._stopping:
            self.unhandled_on_stop += 1
            return
        self._running += 1
        self._handlers_done.clear()
        me = gevent.getcurrent()
        self._handlers.add(me)
        try:
            assert self._on_inbound is not None
            self._on_inbound(conn, doc)
        finally:
            self._handlers.discard(me)
            self._running -= 1
            if not self._running:
                self._handlers_done.set()

    def _report(self, exc: BaseException) -> None:
        """Hand an error no caller can receive to ``on_error``, or log it."""
        if self.on_error is None:  # a client can repeat these at will: rate-limited
            self._warnings.warning(self, masking.mask_text(str(exc)))
            return
        try:
            self.on_error(exc)
        except Exception as handler_exc:
            log.error("on_error handler of %s failed: %s", self, type(handler_exc).__name__)

    # -- stopping -------------------------------------------------------------------------
    def stop(self, timeout: Optional[float] = 5.0) -> None:
        """Stop gracefully, within ``timeout`` seconds (default 5) whatever the peers do.

        Stops accepting links and handling new requests, lets the handlers already
        running answer, then closes every link gracefully (in-flight sends get their
        answers, queued replies are written). Links still open at the deadline are failed.
        """
        timeout = 5.0 if timeout is None else seconds(timeout, "timeout")
        threads.check(self._owner, self)
        deadline = time.monotonic() + timeout
        self._stopping = True
        self.close()  # the listener: no new links
        for greenlet in list(self._handshakes):
            greenlet.kill(block=False)
        self._before_links_close(deadline)
        # Handlers already running answer first; their replies go out as the links close.
        self._handlers_done.wait(max(0.0, deadline - time.monotonic()))
        links = list(self.connections)
        closers = [gevent.spawn(close_quietly, conn, max(0.0, deadline - time.monotonic())) for conn in links]
        gevent.joinall(closers, timeout=max(0.0, deadline - time.monotonic()))
        for conn in links:
            if conn.state != "closed":
                conn.fail("server stopped")
        gevent.killall(closers, block=False)
        # Handlers still running past the deadline answer nothing now: their links are gone.
        gevent.killall([g for g in self._handlers if g is not gevent.getcurrent()], block=False)
        # Let every link's on_closed (its log line, the user's handler) run before we return.
        self.wait_no_links(deadline - time.monotonic())

    def wait_no_links(self, timeout: Optional[float] = None) -> bool:
        """Block until no link is open (each closed one's ``on_closed`` has run); False if
        ``timeout`` seconds passed first."""
        return bool(self._no_links.wait(None if timeout is None else max(0.0, timeout)))

    def _before_links_close(self, deadline: float) -> None:
        """Hook: work to finish before the links close (MockHost's delayed answers)."""

    def __enter__(self) -> Server:
        if not self.started:
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _send_or_error(conn: Connection, doc: dict[str, str], timeout: Optional[float]) -> Any:
    """``conn.send(doc)``'s response, or the error it raised: returned, never raised, since
    gevent would print the greenlet's arguments (the message, PAN included) for an error."""
    try:
        return conn.send(doc, timeout=timeout)
    except Exception as exc:
        return exc


def bind_reuse_port(address: Any, family: int) -> Any:
    """A socket bound to ``address`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT`` set: the
    processes that each bind one share the port."""
    sock = socket.socket(family=family)
    try:
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
        reuse_port = getattr(_stdlib_socket, "SO_REUSEPORT", None)
        if reuse_port is None:  # pragma: no cover - every Linux and BSD has it
            raise GevisoError("SO_REUSEPORT is not available on this system")
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, reuse_port, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _reuse_port_listener(address: Any, backlog: Optional[int], family: int) -> Any:
    """A listening socket on a port other processes may listen on too."""
    sock = bind_reuse_port(address, family)
    try:
        sock.listen(backlog or gevent.server.StreamServer.backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "Server"]
