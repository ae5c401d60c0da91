"""geviso.Server on real loopback sockets: links, server-initiated sends, the connection
limit, clean closes, graceful and bounded stop, TLS and mutual TLS."""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
from conftest import respond, wait_until
from iso8583.specs import default as spec

import geviso
from geviso import tls


def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
    conn.reply(respond(doc))


class Recorder:
    """Collects what a server's handlers were told."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.closed: list[geviso.Connection] = []

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    def on_closed(self, conn: geviso.Connection) -> None:
        self.closed.append(conn)


@pytest.fixture
def servers():
    made: list[geviso.Server] = []

    def make(**options: Any) -> geviso.Server:
        options.setdefault("on_inbound", answer)
        server = geviso.Server(("127.0.0.1", 0), spec, **options)
        server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop(timeout=1)


@pytest.fixture
def clients(links):
    """``clients(server, **options)``: a connected client of ``server`` (see ``links``)."""
    return lambda server, **options: links(server.address, spec=spec, **options)


def test_a_client_request_is_answered_by_on_inbound(servers, clients):
    server = servers()
    assert server.address[1] > 0
    conn = clients(server)
    response = conn.send({"t": "0200", "3": "000000", "4": "000000001000"})
    assert response["t"] == "0210" and response["39"] == "00" and response["4"] == "000000001000"


def test_connections_is_the_live_set_and_a_clean_peer_close_is_not_an_error(servers, clients):
    seen = Recorder()
    server = servers(on_error=seen.on_error, on_closed=seen.on_closed)
    first, second = clients(server), clients(server)
    assert wait_until(lambda: len(server.connections) == 2)
    first.send({"t": "0800", "70": "301"})
    first.close()
    assert wait_until(lambda: len(server.connections) == 1)
    assert wait_until(lambda: len(seen.closed) == 1)
    assert seen.closed[0].failure is None
    assert seen.errors == []
    assert second.send({"t": "0800", "70": "301"})["39"] == "00"
    assert server.link_stats().replies == 2


def test_the_host_sends_to_a_client_and_gets_its_answer(servers, clients):
    server = servers()
    told: list[dict[str, str]] = []

    def client_answers(conn: geviso.Connection, doc: dict[str, str]) -> None:
        told.append(doc)
        conn.reply(respond(doc))

    client = clients(server, on_inbound=client_answers)
    assert wait_until(lambda: len(server.connections) == 1)
    (link,) = server.connections
    response = link.send({"t": "0800", "70": "001"}, timeout=5)
    assert response["t"] == "0810" and response["39"] == "00" and response["70"] == "001"
    assert told[0]["t"] == "0800"
    # the client's own requests still work alongside
    assert client.send({"t": "0800", "70": "301"})["39"] == "00"


def test_send_all_reaches_every_client(servers, clients):
    server = servers()
    for _ in range(3):
        clients(server, on_inbound=answer)
    assert wait_until(lambda: len(server.connections) == 3)
    results = server.send_all({"t": "0800", "70": "301"}, timeout=5)
    assert len(results) == 3
    assert all(isinstance(r, dict) and r["t"] == "0810" for r in results.values())


def test_over_max_connections_the_socket_is_closed_at_once_and_on_error_says_so(servers, clients):
    seen = Recorder()
    server = servers(max_connections=2, on_error=seen.on_error)
    a, b = clients(server), clients(server)
    assert wait_until(lambda: len(server.connections) == 2)
    extra = clients(server)
    assert extra.wait_closed(timeout=5), "the refused link was not closed"
    with pytest.raises(geviso.ConnectionClosed):
        extra.send({"t": "0800", "70": "301"})
    assert wait_until(lambda: len(seen.errors) == 1)
    assert isinstance(seen.errors[0], geviso.errors.TooManyConnections)
    assert "refused" in str(seen.errors[0])
    assert server.refused == 1 and server.accepted == 2
    # the links already open are untouched, and a freed place is taken again
    assert a.send({"t": "0800", "70": "301"})["39"] == "00"
    b.close()
    assert wait_until(lambda: len(server.connections) == 1)
    c = clients(server)
    assert c.send({"t": "0800", "70": "301"})["39"] == "00"
    assert server.accepted == 3


def test_stop_lets_sends_in_flight_get_their_answers(servers, clients):
    server = servers()

    def slow_answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
        gevent.sleep(0.3)
        conn.reply(respond(doc))

    clients(server, on_inbound=slow_answer)
    assert wait_until(lambda: len(server.connections) == 1)
    (link,) = server.connections
    sends = [gevent.spawn(link.send, {"t": "0800", "70": "301"}, timeout=5) for _ in range(5)]
    gevent.sleep(0.05)  # all five written, none answered yet
    assert link.in_flight == 5
    server.stop(timeout=5)
    gevent.joinall(sends, timeout=5)
    assert all(s.successful() for s in sends), [s.exception for s in sends]
    assert [s.value["t"] for s in sends] == ["0810"] * 5
    assert link.state == "closed" and link.failure is None
    assert server.connections == set()


def test_stop_returns_within_its_timeout_whatever_the_peers_do(servers, clients):
    server = servers()
    clients(server, on_inbound=lambda conn, doc: None)  # never answers the host
    assert wait_until(lambda: len(server.connections) == 1)
    (link,) = server.connections
    stuck = gevent.spawn(link.send, {"t": "0800", "70": "301"}, timeout=30)
    gevent.sleep(0.05)
    started = time.monotonic()
    server.stop(timeout=0.5)
    assert time.monotonic() - started < 3.0
    stuck.join(timeout=2)
    assert isinstance(stuck.exception, geviso.ConnectionClosed)
    assert link.state == "closed"


def test_stop_refuses_new_links(servers, clients):
    server = servers()
    address = server.address
    server.stop(timeout=1)
    with pytest.raises(geviso.ConnectFailed):
        geviso.Connection(address, spec, connect_timeout=2).connect()


def test_the_server_is_a_context_manager():
    with geviso.Server(("127.0.0.1", 0), spec, on_inbound=answer) as server:
        with geviso.Connection(server.address, spec, send_timeout=5) as conn:
            assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
    assert server.closed


def test_two_servers_share_a_port_with_reuse_port():
    first = geviso.Server(("127.0.0.1", 0), spec, on_inbound=answer, reuse_port=True)
    first.start()
    second = geviso.Server(("127.0.0.1", first.address[1]), spec, on_inbound=answer, reuse_port=True)
    try:
        second.start()
        assert second.address == first.address
        for _ in range(4):
            with geviso.Connection(first.address, spec, send_timeout=5) as conn:
                assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
    finally:
        first.stop(timeout=1)
        second.stop(timeout=1)


def test_tls_links(servers, clients, certs):
    context = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key)
    server = servers(tls=context)
    conn = clients(server, tls=tls.client_context(cafile=certs.ca))
    assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
    (link,) = server.connections
    assert link._sock.version() in ("TLSv1.2", "TLSv1.3")


def test_mutual_tls_refuses_a_client_without_a_certificate(servers, clients, certs):
    seen = Recorder()
    context = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key, client_cafile=certs.ca)
    server = servers(tls=context, on_error=seen.on_error)
    with_cert = tls.client_context(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    assert clients(server, tls=with_cert).send({"t": "0800", "70": "301"})["39"] == "00"
    without = geviso.Connection(server.address, spec, tls=tls.client_context(cafile=certs.ca), send_timeout=2)
    try:
        without.connect()  # TLS 1.3: the host checks the certificate after the client is done
        with pytest.raises((geviso.ConnectionClosed, geviso.SendTimeout)):
            without.send({"t": "0800", "70": "301"})
    except geviso.ConnectFailed:
        pass
    finally:
        without.fail("test over")
    assert wait_until(lambda: len(seen.errors) == 1)
    assert isinstance(seen.errors[0], geviso.ConnectFailed)
    assert "TLS handshake" in str(seen.errors[0])
    assert len(server.connections) == 1


def test_a_client_that_never_handshakes_is_dropped_after_the_handshake_timeout(servers, certs):
    from gevent import socket

    seen = Recorder()
    context = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key)
    server = servers(tls=context, on_error=seen.on_error, handshake_timeout=0.2)
    raw = socket.create_connection(server.address)
    try:
        assert wait_until(lambda: len(seen.errors) == 1)
        assert "timed out" in str(seen.errors[0])
        raw.settimeout(2)
        assert raw.recv(10) == b""  # the host closed it
    finally:
        raw.close()


def test_a_stopped_server_starts_again_on_the_same_port():
    server = geviso.Server(("127.0.0.1", 0), spec, on_inbound=answer)
    server.start()
    port = server.address[1]
    server.stop(timeout=1)
    server.start()
    try:
        assert server.address[1] == port
        with geviso.Connection(server.address, spec, send_timeout=5) as conn:
            assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
    finally:
        server.stop(timeout=1)
