"""A link fails as soon as it can no longer work, and says why; close() keeps its bound."""

from __future__ import annotations

import ssl
import time

import gevent
import pytest
from conftest import EchoHost, respond

import geviso
from geviso import tls

ECHO = {"t": "0800", "70": "301"}


def _peer_request_then_answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
    """The host sends the client a request of its own before answering."""
    conn.reply({"t": "0800", "11": "424242", "70": "301"})
    conn.reply(respond(doc))


@pytest.mark.parametrize("error", [gevent.Timeout, gevent.GreenletExit, KeyboardInterrupt])
def test_a_base_exception_from_an_inline_handler_fails_the_link_at_once(echo_host, links, error):
    def handler(conn: geviso.Connection, doc: dict[str, str]) -> None:
        raise error()

    echo_host.answer = _peer_request_then_answer
    conn = links(echo_host.address, send_timeout=30, inline_inbound=True, on_inbound=handler)
    started = time.monotonic()
    with gevent.Timeout(10):
        with pytest.raises(geviso.ConnectionClosed) as info:
            try:
                conn.send({"t": "0200", "4": "000000000100"})
            except KeyboardInterrupt:  # gevent hands it to the main greenlet: us
                conn.wait_closed(5)
                raise geviso.ConnectionClosed(str(conn.failure)) from None
    assert time.monotonic() - started < 5  # at once, not at the 30 s timeout
    assert conn.state == "closed" and not conn.ready
    assert "reader" in str(info.value) or "reader" in str(conn.failure)
    with pytest.raises(geviso.ConnectionClosed):
        conn.send(ECHO)


def test_a_killed_writer_fails_the_link(echo_host, held, links):
    conn = links(echo_host.address, send_timeout=30)
    waiting = gevent.spawn(conn.send, ECHO)
    gevent.sleep(0.05)
    conn._greenlets[1].kill()  # the writer, killed from outside
    with pytest.raises(geviso.ConnectionClosed) as info:
        waiting.get(timeout=5)
    assert "writer" in str(info.value)
    assert conn.state == "closed"


@pytest.fixture
def mtls_host(certs):
    host = EchoHost(
        ssl_context=tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key, client_cafile=certs.ca)
    )
    yield host
    host.stop()


def test_a_tls_1_3_refused_client_certificate_fails_sends_as_never_sent(mtls_host, certs, links):
    """TLS 1.3 ends the client's handshake before the host checks its certificate; the
    host's alert comes on the first read. The host processed nothing, so every pending
    send fails with sent=False (safe to retry elsewhere), naming the TLS reason."""
    ctx = tls.client_context(cafile=certs.ca)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    conn = links(mtls_host.address, tls=ctx, send_timeout=10)
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}) for i in range(5)]
    gevent.joinall(jobs, timeout=10)
    for job in jobs:
        assert isinstance(job.exception, geviso.ConnectionClosed), job.exception
        assert job.exception.sent is False
        assert "TLS" in str(job.exception) and "CERTIFICATE" in str(job.exception).upper()
    assert mtls_host.received == []


def test_close_with_an_unanswered_sign_off_returns_within_its_timeout(echo_host, held, links):
    def sign_off(conn: geviso.Connection) -> None:
        conn.send({"t": "0800", "70": "002"})  # the host never answers

    conn = links(echo_host.address, send_timeout=30, on_close=sign_off)
    started = time.monotonic()
    with pytest.raises(geviso.GevisoError, match="on_close raised SendTimeout"):
        conn.close(timeout=0.5)
    assert 0.4 <= time.monotonic() - started < 3.0
    assert conn.state == "closed" and len(held.items) == 1  # the sign-off was written


def test_close_bounds_an_on_close_that_blocks_on_something_else(echo_host, links):
    conn = links(echo_host.address, send_timeout=30, on_close=lambda c: gevent.sleep(30))
    started = time.monotonic()
    with pytest.raises(geviso.GevisoError):
        conn.close(timeout=0.3)
    assert time.monotonic() - started < 3.0 and conn.state == "closed"


def test_a_base_exception_from_a_spawned_handler_is_reported_without_the_message(echo_host, links, capfd):
    """Not inline: the handler's own greenlet ends, the error is reported, the link
    stays up, and gevent never prints the greenlet's arguments (the message, PAN and all)."""
    pan = "4111111111111111"
    reported: list[BaseException] = []

    def handler(conn: geviso.Connection, doc: dict[str, str]) -> None:
        raise gevent.Timeout()

    def peer_request(conn: geviso.Connection, doc: dict[str, str]) -> None:
        conn.reply({"t": "0200", "11": "424242", "2": pan, "4": "000000000100"})
        conn.reply(respond(doc))

    echo_host.answer = peer_request
    conn = links(echo_host.address, on_inbound=handler, on_error=reported.append)
    assert conn.send(ECHO)["t"] == "0810"
    gevent.sleep(0.1)
    assert reported and "Timeout" in str(reported[0]) and conn.state == "open"
    assert pan not in capfd.readouterr().err
