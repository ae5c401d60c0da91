"""geviso.tls: TLS 1.2+ contexts, mutual TLS, over real loopback links (certificates made per run)."""

from __future__ import annotations

import ssl

import gevent
import gevent.server
import pytest
from conftest import EchoHost, respond, wait_until
from iso8583.specs import default as spec

import geviso
from geviso import tls

ECHO = {"t": "0800", "70": "301"}


@pytest.fixture
def mtls_host(certs):
    """An EchoHost behind gevent's StreamServer ssl_context, requiring client certificates."""
    host = EchoHost(ssl_context=tls.server_context(
        certfile=certs.server_cert, keyfile=certs.server_key, client_cafile=certs.ca))
    yield host
    host.stop()


def test_contexts_require_tls_1_2_and_verify(certs):
    client = tls.client_context(cafile=certs.ca)
    server = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key, client_cafile=certs.ca)
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2 and server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert server.verify_mode == ssl.CERT_REQUIRED
    plain = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key)
    assert plain.verify_mode == ssl.CERT_NONE  # no client_cafile: no client certificate asked for


def test_mtls_client_with_a_certificate_is_accepted(mtls_host, certs, links):
    ctx = tls.client_context(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    conn = links(mtls_host.address, tls=ctx)
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}) for i in range(100)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value["4"] for j in jobs] == ["%012d" % i for i in range(100)]
    peer_cert = mtls_host.links[0]._sock.getpeercert()
    assert peer_cert is not None  # the host saw our client certificate
    assert conn._sock.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mtls_client_without_a_certificate_is_refused(mtls_host, certs, links, version):
    """TLS 1.2 refuses in the handshake (connect fails); TLS 1.3 finishes the client's side
    of the handshake first, so the refusal arrives as the link closing. Either way no
    request reaches the host and nothing hangs."""
    ctx = tls.client_context(cafile=certs.ca)
    ctx.maximum_version = version
    with gevent.Timeout(10):
        try:
            conn = links(mtls_host.address, tls=ctx)
        except geviso.ConnectFailed:
            outcome = "connect refused"
        else:
            with pytest.raises(geviso.ConnectionClosed):
                conn.send(ECHO)
            outcome = "link closed"
    if version == ssl.TLSVersion.TLSv1_2:
        assert outcome == "connect refused"
    assert mtls_host.received == []


def test_host_certificate_from_another_ca_is_refused(mtls_host, certs):
    ctx = tls.client_context(cafile=certs.other_ca, certfile=certs.client_cert, keyfile=certs.client_key)
    conn = geviso.Connection(mtls_host.address, spec, tls=ctx, connect_timeout=5)
    with pytest.raises(geviso.ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        conn.connect()
    assert conn.state == "closed"


def test_host_name_is_checked_and_can_be_set(mtls_host, certs, links):
    base = dict(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    with pytest.raises(geviso.ConnectFailed):
        links(mtls_host.address, tls=tls.client_context(server_hostname="bank.example", **base))
    conn = links(mtls_host.address, tls=tls.client_context(server_hostname="localhost", **base))
    assert conn.send(ECHO)["t"] == "0810"
    conn = links(mtls_host.address, tls=tls.client_context(**base), server_hostname="localhost")
    assert conn.send(ECHO)["t"] == "0810"


def test_tls_wrap_and_from_socket_make_a_tls_server_side(certs, links):
    """The server side wrapped by tls.wrap (no StreamServer ssl_context), then from_socket."""
    server_ctx = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key, client_cafile=certs.ca)
    server_links = []

    def handle(sock, address):
        wrapped = tls.wrap(sock, server_ctx, server_side=True)
        conn = geviso.Connection.from_socket(wrapped, spec, on_inbound=lambda c, d: c.reply(respond(d)))
        server_links.append(conn)
        conn.wait_closed()

    server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        ctx = tls.client_context(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
        conn = links(("127.0.0.1", server.server_port), tls=ctx)
        assert conn.send(ECHO)["t"] == "0810"
        conn.close()
        assert wait_until(lambda: server_links and server_links[0].closed)
    finally:
        server.stop(timeout=1)


def test_stdlib_context_works_too(mtls_host, certs, links):
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.load_cert_chain(certs.client_cert, certs.client_key)
    conn = links(mtls_host.address, tls=ctx)
    assert conn.send(ECHO)["t"] == "0810"
