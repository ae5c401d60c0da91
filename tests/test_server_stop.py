"""Server.stop(timeout): graceful (handlers already running answer, new requests are
not taken) and bounded (returns within the timeout whatever handlers and peers do)."""

from __future__ import annotations

import time
from typing import Callable

import gevent
import pytest
from conftest import respond, wait_until
from iso8583.specs import default as spec

import geviso

pytestmark = pytest.mark.timeout(60)


def slow_server(delay: float, **options):
    def answer(conn, doc):
        gevent.sleep(delay)
        conn.reply(respond(doc))

    server = geviso.Server(("127.0.0.1", 0), spec, on_inbound=answer, **options)
    server.start()
    return server


def client(server, **options) -> geviso.Connection:
    options.setdefault("send_timeout", 10)
    return geviso.Connection(("127.0.0.1", server.server_port), spec, **options).connect()


def test_stop_lets_a_handler_already_running_answer_before_closing():
    server = slow_server(0.3)
    conn = client(server)
    sending = gevent.spawn(conn.send, {"t": "0200", "4": "000000001000"})
    assert wait_until(lambda: server._running == 1)
    started = time.monotonic()
    server.stop(timeout=5)
    assert time.monotonic() - started < 4.5
    assert sending.get(timeout=5)["39"] == "00"  # the answer, not ConnectionClosed(sent=True)
    assert conn.wait_closed(5)
    assert not server.connections


def test_requests_arriving_after_stop_began_are_not_handled():
    server = slow_server(0.5)
    conn = client(server)
    first = gevent.spawn(conn.send, {"t": "0200", "11": "000001"})
    assert wait_until(lambda: server._running == 1)
    stopper = gevent.spawn(server.stop, 5)
    assert wait_until(lambda: server._stopping)
    late = gevent.spawn(conn.send, {"t": "0200", "11": "000002"})
    assert first.get(timeout=5)["11"] == "000001"
    stopper.get(timeout=6)
    with pytest.raises(geviso.ConnectionClosed) as info:
        late.get(timeout=5)
    assert info.value.sent
    assert server.unhandled_on_stop == 1


def handler_never_answering() -> tuple[geviso.Server, Callable[[], bool]]:
    server = slow_server(30)
    return server, lambda: server._running == 1


def mock_host_with_a_delayed_answer() -> tuple[geviso.Server, Callable[[], bool]]:
    host = geviso.MockHost(("127.0.0.1", 0), rules=[{"delay_ms": 30_000}])
    host.start()
    return host, lambda: host.pending == 1


@pytest.mark.parametrize("busy_server", [handler_never_answering, mock_host_with_a_delayed_answer])
def test_stop_returns_within_its_timeout_with_an_answer_30s_away(busy_server):
    server, busy = busy_server()
    conn = client(server)
    waiting = gevent.spawn(conn.send, {"t": "0200"})
    assert wait_until(busy)
    started = time.monotonic()
    server.stop(timeout=0.5)
    assert time.monotonic() - started < 2.5  # the timeout and generous slack, not 30 s
    with pytest.raises(geviso.ConnectionClosed):
        waiting.get(timeout=5)
    assert not server.connections
    assert getattr(server, "pending", 0) == 0


def test_a_nan_or_negative_close_timeout_is_refused_before_closing():
    server = slow_server(0)
    conn = client(server)
    try:
        for bad in (float("nan"), -1, float("inf")):
            with pytest.raises(geviso.ConfigurationError, match="timeout"):
                conn.close(timeout=bad)
        assert not conn.closed
        conn.close(timeout=1)
    finally:
        server.stop(timeout=1)
