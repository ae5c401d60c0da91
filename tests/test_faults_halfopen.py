"""Half-open links: a peer that stops answering while the socket stays open.

TCP alone notices nothing for minutes. With ``read_timeout``/``idle_time`` and the echo
of :mod:`geviso.keepalive`, the client fails a stalled link within a bounded time, so
every pending send fails at once and a pool reconnects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest
from conftest import EchoHost, wait_until
from faultproxy import FaultProxy
from iso8583.specs import default as spec

import geviso
import geviso.keepalive
from geviso.errors import ConnectionClosed, SendTimeout

READ_TIMEOUT = 0.4
ECHO_TIMEOUT = 0.3
#: Generous bound on noticing a stall: read timeout + echo timeout + scheduling slack.
NOTICE_BOUND = READ_TIMEOUT + ECHO_TIMEOUT + 2.0


@pytest.fixture
def proxy(echo_host: EchoHost) -> Iterator[FaultProxy]:
    with FaultProxy(echo_host.address) as p:
        yield p


def watched(address: tuple[str, int], **options: object) -> geviso.Connection:
    """A connection that echoes when idle or silent, and fails the link when unanswered."""
    check = geviso.keepalive.echo_handler(ECHO_TIMEOUT)
    return geviso.Connection(
        address,
        spec,
        send_timeout=1.0,
        idle_time=READ_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        on_ping=check,
        on_read_timeout=check,
        **options,  # type: ignore[arg-type]
    )


def test_stalled_idle_link_is_failed_within_bound(proxy: FaultProxy) -> None:
    failed: list[BaseException] = []
    conn = watched(proxy.address, on_failed=lambda c, exc: failed.append(exc)).connect()
    assert proxy.wait_links(1)
    proxy.stall()
    stalled_at = time.monotonic()
    assert conn.wait_closed(NOTICE_BOUND + 2)
    assert time.monotonic() - stalled_at < NOTICE_BOUND
    assert wait_until(lambda: failed)
    assert isinstance(failed[0], SendTimeout)
    with pytest.raises(ConnectionClosed):
        conn.send({"t": "0800", "70": "301"})


def test_stall_with_requests_in_flight_fails_them_and_the_link(proxy: FaultProxy) -> None:
    conn = watched(proxy.address).connect()
    assert conn.send({"t": "0200"})["39"] == "00"
    proxy.stall()
    stalled_at = time.monotonic()
    sends = [gevent.spawn(conn.send, {"t": "0200"}, timeout=5.0) for _ in range(20)]
    gevent.joinall(sends, timeout=10)
    assert all(g.ready() for g in sends)
    # They fail when the echo fails the link, long before their own 5 s timeout.
    for g in sends:
        assert isinstance(g.exception, ConnectionClosed) and g.exception.sent
    assert time.monotonic() - stalled_at < NOTICE_BOUND
    assert conn.closed and conn.in_flight == 0


def test_healthy_idle_link_stays_up_on_echoes(echo_host: EchoHost) -> None:
    conn = watched(echo_host.address).connect()
    gevent.sleep(READ_TIMEOUT * 4)
    assert not conn.closed
    echoes = [d for d in echo_host.received if d.get("70") == "301"]
    assert len(echoes) >= 2
    assert conn.send({"t": "0200"})["39"] == "00"
    conn.close()


def test_without_echo_a_stalled_link_only_times_out(proxy: FaultProxy) -> None:
    """The control case: without a health check the link lingers half-open."""
    conn = geviso.Connection(proxy.address, spec, send_timeout=0.3, read_timeout=READ_TIMEOUT).connect()
    assert proxy.wait_links(1)
    proxy.stall()
    with pytest.raises(SendTimeout):
        conn.send({"t": "0200"})
    gevent.sleep(READ_TIMEOUT * 2)
    assert not conn.closed
    conn.close(timeout=0.5)


def test_echo_on_a_closed_link_does_nothing(echo_host: EchoHost) -> None:
    conn = geviso.Connection(echo_host.address, spec).connect()
    assert geviso.keepalive.echo(conn, 1.0)
    conn.close()
    assert not geviso.keepalive.echo(conn, 1.0)


def test_pool_replaces_stalled_links_within_bound() -> None:
    host = geviso.MockHost(("127.0.0.1", 0), spec)
    host.start()
    with FaultProxy(host.address) as proxy:
        pool = geviso.Pool(lambda address: watched(address), [proxy.address] * 2, reconnect_wait=0.05)
        pool.connect()
        try:
            before = list(pool.connections)
            assert len(before) == 2 and pool.send({"t": "0200"})["39"] == "00"
            # A link is the proxy's once it has dialled the host too, a moment after the
            # pool's side of it connected.
            assert proxy.wait_links(2)
            assert proxy.stall() == 2
            stalled_at = time.monotonic()
            # Sends during the stall fail within their timeout, never hang.
            with pytest.raises((SendTimeout, ConnectionClosed)):
                pool.send({"t": "0200"}, timeout=0.5)
            assert wait_until(
                lambda: len(pool.connections) == 2 and not set(pool.connections) & set(before), timeout=NOTICE_BOUND + 3
            )
            assert time.monotonic() - stalled_at < NOTICE_BOUND + 1
            assert all(conn.closed for conn in before)
            assert pool.send({"t": "0200"})["39"] == "00"
            assert proxy.accepted == 4
        finally:
            pool.close()
            host.stop(timeout=1)
