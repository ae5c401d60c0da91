"""TLS refusals against a live geviso Server, while a good client keeps being served.

Wrong CA, an expired host certificate, a host name mismatch, a plaintext client on a TLS
port, a TLS client on a plaintext port, and a client without a certificate on an mTLS
port: each is refused with an error that says why, the server reports each failed
handshake once, and the good client on the same server sees no error at all.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import gevent
import gevent.event
import pytest
from conftest import Certs, wait_until
from faultproxy import sockets_to
from iso8583.specs import default as spec

import geviso
from geviso import tls
from geviso.errors import ConnectFailed, ConnectionClosed

ECHO = {"t": "0800", "70": "301"}


class Served:
    """A MockHost, its on_error reports, and a good client sending all along."""

    def __init__(self, server_tls: Any, client_tls: Any) -> None:
        self.reports: list[BaseException] = []
        self.host = geviso.MockHost(("127.0.0.1", 0), spec, tls=server_tls, on_error=self.reports.append)
        self.host.start()
        self.good_errors: list[BaseException] = []
        self.answered = 0
        self.good = geviso.Connection(
            self.host.address, spec, tls=client_tls, send_timeout=5, on_error=self.good_errors.append
        ).connect()
        self._done = gevent.event.Event()
        self._runner = gevent.spawn(self._serve_good)

    def _serve_good(self) -> None:
        while not self._done.is_set():
            self.good.send({"t": "0200", "4": "000000001000"})
            self.answered += 1
            gevent.sleep(0.01)

    def finish(self) -> None:
        """Stop the good client; it must have had no error and many answers."""
        wait_until(lambda: self.answered > 5 or self._runner.dead)
        self._done.set()
        self._runner.join(timeout=10)
        assert self._runner.successful(), self._runner.exception
        assert not self.good_errors and self.answered > 5
        self.good.close()
        self.host.stop(timeout=2)


@pytest.fixture
def mtls(certs: Certs) -> Iterator[Served]:
    server = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key, client_cafile=certs.ca)
    good = tls.client_context(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    served = Served(server, good)
    yield served
    served.finish()


def refused(address: tuple[str, int], context: Any, **options: Any) -> ConnectFailed:
    """Connect with ``context``; the ConnectFailed it must raise, within a bound."""
    options.setdefault("connect_timeout", 3)
    conn = geviso.Connection(address, spec, tls=context, **options)
    with gevent.Timeout(10):
        with pytest.raises(ConnectFailed) as info:
            conn.connect()
    assert conn.state == "closed"
    return info.value


def handshake_reports(served: Served, n: int) -> list[BaseException]:
    assert wait_until(lambda: len(served.reports) >= n)
    gevent.sleep(0.1)
    assert len(served.reports) == n, served.reports
    assert all(isinstance(r, ConnectFailed) and "TLS handshake" in str(r) for r in served.reports)
    return served.reports


def client_ctx(certs: Certs, **options: Any) -> Any:
    return tls.client_context(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key, **options)


def test_wrong_ca_is_refused(mtls: Served, certs: Certs) -> None:
    ctx = tls.client_context(cafile=certs.other_ca, certfile=certs.client_cert, keyfile=certs.client_key)
    for _ in range(5):
        exc = refused(mtls.host.address, ctx)
        assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
    handshake_reports(mtls, 5)


def test_host_name_mismatch_is_refused(mtls: Served, certs: Certs) -> None:
    exc = refused(mtls.host.address, client_ctx(certs, server_hostname="issuer.example"))
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc) and "mismatch" in str(exc)
    handshake_reports(mtls, 1)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_client_without_certificate_is_refused_by_mtls(mtls: Served, certs: Certs, version: ssl.TLSVersion) -> None:
    """TLS 1.2 refuses in the handshake; TLS 1.3 ends the client's half of the handshake
    before the host checks, so the refusal comes as the host's alert on the first read."""
    ctx = tls.client_context(cafile=certs.ca)
    ctx.maximum_version = version
    conn = geviso.Connection(mtls.host.address, spec, tls=ctx, connect_timeout=3, send_timeout=3)
    with gevent.Timeout(10):
        try:
            conn.connect()
        except ConnectFailed as exc:
            assert version == ssl.TLSVersion.TLSv1_2
            reason = str(exc)
        else:
            with pytest.raises(ConnectionClosed):
                conn.send(ECHO)
            reason = str(conn.failure)
    assert "CERTIFICATE" in reason.upper() or "HANDSHAKE" in reason.upper(), reason
    assert conn.closed
    handshake_reports(mtls, 1)
    assert mtls.host.stats.received == mtls.answered or mtls.host.stats.received == mtls.answered + 1


def test_plaintext_client_on_a_tls_port_is_dropped(mtls: Served) -> None:
    conn = geviso.Connection(mtls.host.address, spec, send_timeout=3).connect()
    with gevent.Timeout(10):
        with pytest.raises(ConnectionClosed):
            conn.send(ECHO)
    [report] = handshake_reports(mtls, 1)
    assert isinstance(report.__cause__, (ssl.SSLError, OSError))


def test_expired_host_certificate_is_refused(certs: Certs, tmp_path: Path) -> None:
    assert certs.authority is not None
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = certs.authority.issue_cert(
        "127.0.0.1",
        "localhost",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    expired.cert_chain_pems[0].write_to_path(str(tmp_path / "expired.pem"))
    expired.private_key_pem.write_to_path(str(tmp_path / "expired.key"))
    server = tls.server_context(certfile=str(tmp_path / "expired.pem"), keyfile=str(tmp_path / "expired.key"))
    # The good client on this server has accepted the risk: it does not verify.
    lax = tls.client_context(cafile=certs.ca, check_hostname=False)
    lax.verify_mode = ssl.CERT_NONE
    served = Served(server, lax)
    try:
        exc = refused(served.host.address, tls.client_context(cafile=certs.ca))
        assert "expired" in str(exc)
        handshake_reports(served, 1)
    finally:
        served.finish()


def test_tls_client_on_a_plaintext_port_fails_to_connect(certs: Certs) -> None:
    served = Served(None, None)
    try:
        exc = refused(served.host.address, client_ctx(certs), connect_timeout=1)
        assert "timed out" in str(exc) or "EOF" in str(exc) or "closed" in str(exc)
        # The host saw a ClientHello as a frame that never completed: one report.
        assert wait_until(lambda: len(served.reports) == 1), served.reports
        assert sockets_to(served.host.address[1]) == [served.good._sock.fileno()]  # no socket left behind
    finally:
        served.finish()


def test_many_bad_handshakes_at_once(mtls: Served, certs: Certs) -> None:
    bad: list[Callable[[], Any]] = [
        lambda: refused(mtls.host.address, tls.client_context(cafile=certs.other_ca)),
        lambda: refused(mtls.host.address, client_ctx(certs, server_hostname="issuer.example")),
    ]
    jobs = [gevent.spawn(bad[i % 2]) for i in range(40)]
    gevent.joinall(jobs, timeout=20)
    assert all(job.successful() for job in jobs), [job.exception for job in jobs if job.exception][:3]
    handshake_reports(mtls, 40)
    assert len(sockets_to(mtls.host.address[1])) == 1  # the good client's: none left behind
    with geviso.Connection(mtls.host.address, spec, tls=client_ctx(certs), send_timeout=5) as conn:
        assert conn.send(ECHO)["39"] == "00"
