"""A recording proxy in front of a real host: the mock host's ``proxy_to=``/``record=``.

Every request a client sends the mock host is forwarded, as it came, over a
:class:`~geviso.Pool` of links to the real host (TLS as for any client link), and the
real answer goes back to the client. Each exchange is written to a capture
(:mod:`geviso.capture`), masked unless ``record_card_data`` is set. A request the real
host does not answer in time (or cannot be sent) is answered with field 39 ``91``
(issuer unavailable) and recorded with no answer and the error's name.

A *front* is what :class:`~geviso.MockHost` asks first about each request:
``answer(conn, doc)`` returns True when it takes the request (and answers it itself),
False to let the rules answer. :func:`front_for` builds the front the mock host's
keywords ask for: this proxy, or a :class:`~geviso.mock.playback.PlaybackFront`.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

import gevent
import gevent.pool

from .. import greenlets, specs
from ..capture import format as capture_mod
from ..connection import Address, Connection, parse_address
from ..errors import ConfigurationError, ConnectionClosed, DuplicateKey, GevisoError
from ..options import seconds
from ..pool import Pool

if TYPE_CHECKING:
    from .host import MockHost
    from .playback import Playback

log = logging.getLogger(__name__)

#: Field 39 of the answer to a request the real host did not answer.
UNAVAILABLE = "91"
#: Seconds a forwarded request waits for the real host's answer.
DEFAULT_TIMEOUT = 30.0
#: How long a request whose key (STAN) is already in flight upstream waits for it to
#: clear, in steps of :data:`_RETRY_STEP` seconds.
DUPLICATE_WAIT = 2.0
_RETRY_STEP = 0.005

PathLike = Union[str, "os.PathLike[str]"]


class Front:
    """What a mock host asks before its rules (see the module docstring)."""

    def start(self, host: MockHost) -> None:
        """Called when the host starts."""

    def answer(self, conn: Connection, doc: dict[str, str]) -> bool:
        """True when this front takes ``doc`` (and answers it); False: the rules answer."""
        return False

    def stop(self, deadline: float) -> None:
        """Called when the host stops, before its links close (``deadline``: monotonic)."""


def count_answer(host: MockHost, code: str) -> None:
    """Count one answer written by a front in the host's stats."""
    stats = host.stats
    stats.responded += 1
    stats.codes[code] = stats.codes.get(code, 0) + 1


def reply(host: MockHost, conn: Connection, answer: Mapping[str, str]) -> bool:
    """Write ``answer`` on ``conn`` and count it; False if the link had closed."""
    try:
        conn.reply(answer)
    except ConnectionClosed:
        host.stats.lost += 1
        return False
    except GevisoError as exc:
        host.stats.errors += 1
        host._report(exc)
        return False
    count_answer(host, answer.get("39", ""))
    return True


class RecordingProxy(Front):
    """Forwards every request to ``address`` and records each exchange to ``record``.

    ``tls`` is a client ``SSLContext`` (:func:`geviso.tls.client_context`) for a TLS
    host; ``connections`` links are kept up to it; ``timeout`` bounds each forwarded
    request. ``record`` may be None (a plain proxy).
    """

    def __init__(
        self,
        address: Address,
        *,
        record: Optional[PathLike] = None,
        record_card_data: bool = False,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        connections: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        spec_name: Optional[str] = None,
    ) -> None:
        if connections < 1:
            raise ConfigurationError("a proxy needs at least one link to its host")
        self.address = parse_address(address)
        self.record = None if record is None else os.fspath(record)
        if self.record is not None:
            capture_mod.check_writable(self.record)
        self.record_card_data = record_card_data
        self.tls = tls
        self.server_hostname = server_hostname
        self.connections = connections
        self.timeout = seconds(timeout, "timeout", positive=True)
        self.spec_name = spec_name
        self.writer: Optional[capture_mod.CaptureWriter] = None
        self.pool: Optional[Pool] = None
        self._host: Optional[MockHost] = None
        self._jobs = gevent.pool.Group()

    def start(self, host: MockHost) -> None:
        """Open the capture and the links to the real host (which keep redialling)."""
        self._host = host
        if self.record is not None:
            spec_name = self.spec_name or next((n for n, s in specs.BUNDLED.items() if s is host.spec), "custom")
            header = capture_mod.Header(framing=host.framing.name, spec=spec_name, masked=not self.record_card_data)
            self.writer = capture_mod.CaptureWriter(
                self.record, header, spec=host.spec, record_card_data=self.record_card_data, flush_each=True
            )

        def factory(address: Any) -> Connection:
            return Connection(
                address,
                host.spec,
                framing=host.framing,
                tls=self.tls,
                server_hostname=self.server_hostname,
                send_timeout=self.timeout,
            )

        self.pool = Pool(factory, [self.address] * self.connections, min_connections=0, reconnect_wait=0.5,
                         max_reconnect_wait=5.0)
        self.pool.connect(timeout=self.timeout)
        if not self.pool.usable:
            log.warning("proxy: no link to %s:%d yet; retrying in the background", *self.address)

    def answer(self, conn: Connection, doc: dict[str, str]) -> bool:
        """Forward ``doc`` in a greenlet of its own; always taken."""
        self._jobs.add(greenlets.spawn_guarded(self._forward, conn, doc))  # its repr: no message
        return True

    def _forward(self, conn: Connection, doc: dict[str, str]) -> None:
        host, pool = self._host, self.pool
        assert host is not None and pool is not None
        request = capture_mod.fields_of(doc)
        seen = time.time()
        started = time.perf_counter()
        answer: Optional[dict[str, str]] = None
        error: Optional[str] = None
        try:
            answer = self._send(pool, request)
        except GevisoError as exc:
            error = type(exc).__name__
        latency_ms = (time.perf_counter() - started) * 1000.0
        if answer is not None:
            answer = capture_mod.fields_of(answer)
            reply(host, conn, answer)
        else:
            host._respond(conn, doc, UNAVAILABLE, None)
        if self.writer is not None:
            self.writer.write(
                capture_mod.Exchange(
                    time=seen,
                    request=request,
                    answer=answer,
                    latency_ms=None if answer is None else round(latency_ms, 3),
                    link="%s:%d" % conn.address,
                    framing=host.framing.name,
                    error=error,
                )
            )

    def _send(self, pool: Pool, request: dict[str, str]) -> dict[str, str]:
        """The real host's answer; a request whose key is in flight already (two clients
        using one STAN at once) waits for it to clear, up to :data:`DUPLICATE_WAIT`."""
        deadline = time.monotonic() + DUPLICATE_WAIT
        while True:
            try:
                return pool.send(request, timeout=self.timeout)
            except DuplicateKey:
                if time.monotonic() > deadline:
                    raise
                gevent.sleep(_RETRY_STEP)

    def stop(self, deadline: float) -> None:
        """Let forwarded requests finish (until ``deadline``), close the links and the capture."""
        self._jobs.join(timeout=max(0.0, deadline - time.monotonic()))
        self._jobs.kill(block=False)
        if self.pool is not None:
            self.pool.close(timeout=max(0.1, deadline - time.monotonic()))
            self.pool = None
        if self.writer is not None:
            self.writer.close()
            log.info("proxy: %d exchanges recorded to %s", self.writer.count, self.writer.path)


def front_for(
    *,
    proxy_to: Optional[Address] = None,
    record: Optional[PathLike] = None,
    record_card_data: bool = False,
    proxy_tls: Optional[ssl.SSLContext] = None,
    proxy_timeout: float = DEFAULT_TIMEOUT,
    playback: Union[None, PathLike, Playback] = None,
    match: Optional[Iterable[str]] = None,
    playback_latency: bool = False,
    spec_name: Optional[str] = None,
) -> Optional[Front]:
    """The front a :class:`~geviso.MockHost`'s keywords ask for, or None (rules only)."""
    if record is not None and proxy_to is None:
        raise ConfigurationError("record= needs proxy_to= (the host whose answers are recorded)")
    if record_card_data and record is None:
        raise ConfigurationError("record_card_data= needs record=")
    if proxy_to is not None and playback is not None:
        raise ConfigurationError("a mock host either proxies (proxy_to=) or plays back (playback=), not both")
    if proxy_to is not None:
        return RecordingProxy(
            proxy_to,
            record=record,
            record_card_data=record_card_data,
            tls=proxy_tls,
            timeout=proxy_timeout,
            spec_name=spec_name,
        )
    if playback is not None:
        from .playback import PlaybackFront

        return PlaybackFront(playback, match=match, latency=playback_latency)
    if match is not None:
        raise ConfigurationError("match= needs playback=")
    return None


__all__ = ["DEFAULT_TIMEOUT", "UNAVAILABLE", "Front", "RecordingProxy", "count_answer", "front_for", "reply"]
