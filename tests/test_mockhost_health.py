"""The mock host keeps its links healthy: a client that sends nothing within the read
timeout, or leaves its echoes unanswered, is closed, so stalled sockets (real ones, half
a frame sent) cannot lock good clients out; answers that cannot be encoded are logged
once per link, not once per message."""

from __future__ import annotations

import logging
import time

import gevent
import pytest
from conftest import wait_until
from gevent import socket
from iso8583.specs import default as spec

import geviso

pytestmark = pytest.mark.timeout(60)


def stalled_socket(port: int) -> socket.socket:
    """A real client that sent half a frame (the header says 100 bytes, 3 came) and stalls."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"\x00\x64" + b"020")
    return sock


def test_stalled_half_frame_sockets_at_max_connections_cannot_lock_good_clients_out():
    host = geviso.MockHost(("127.0.0.1", 0), max_connections=3, read_timeout=0.5)
    host.start()
    stalled = [stalled_socket(host.server_port) for _ in range(3)]
    try:
        assert wait_until(lambda: len(host.connections) == 3)
        # Full: a good client is refused for now...
        refused = geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=1).connect()
        with pytest.raises(geviso.GevisoError):
            refused.send({"t": "0800", "70": "301"})
        # ...and gets in once the silent links are closed.
        assert wait_until(lambda: host.stats.silent_closed == 3, timeout=10)
        good = geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=5).connect()
        assert good.send({"t": "0800", "70": "301"})["39"] == "00"
        good.close(timeout=1)
        for sock in stalled:  # the host closed them: each reads EOF
            sock.settimeout(5)
            assert sock.recv(10) == b""
    finally:
        for sock in stalled:
            sock.close()
        host.stop(timeout=2)


def test_a_client_that_keeps_talking_is_not_closed_for_silence():
    with geviso.MockHost(("127.0.0.1", 0), read_timeout=0.4) as host:
        conn = geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=5).connect()
        try:
            for _ in range(8):
                assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
                gevent.sleep(0.1)
            assert not conn.closed and host.stats.silent_closed == 0
        finally:
            conn.close(timeout=1)


def test_a_link_that_leaves_its_echoes_unanswered_is_closed():
    host = geviso.MockHost(
        ("127.0.0.1", 0), echo_interval=0.1, echo_timeout=0.2, max_echo_failures=2, read_timeout=None
    )
    host.start()
    deaf = geviso.Connection(("127.0.0.1", host.server_port), spec, on_inbound=lambda c, d: None).connect()
    polite = geviso.Connection(("127.0.0.1", host.server_port), spec, on_inbound=answer_echo).connect()
    try:
        assert deaf.wait_closed(10)
        assert host.stats.echo_closed == 1 and host.stats.echoes_failed >= 2
        assert not polite.closed and host.stats.echoes_answered >= 1
    finally:
        polite.fail("test over")
        host.stop(timeout=2)


def answer_echo(conn: geviso.Connection, doc: dict[str, str]) -> None:
    conn.reply({"t": "0810", "11": doc["11"], "70": doc["70"], "39": "00"})


def test_an_answer_that_cannot_be_encoded_is_logged_once_per_link_with_its_reason(caplog):
    host = geviso.MockHost(("127.0.0.1", 0))
    host.start()
    host.response_code = "\u00e91"  # changed at run time: past the start-time check
    conn = geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=0.3).connect()
    try:
        with caplog.at_level(logging.WARNING, logger="geviso.mock.host"):
            for stan in range(1, 21):
                with pytest.raises(geviso.SendTimeout):
                    conn.send({"t": "0200", "11": "%06d" % stan}, timeout=0.05)
            assert wait_until(lambda: host.stats.errors == 20)
        lines = [r.getMessage() for r in caplog.records if r.name == "geviso.mock.host"]
        assert len(lines) == 1, lines
        assert "could not be encoded" in lines[0] and "field 39" in lines[0]
    finally:
        conn.fail("test over")
        host.stop(timeout=2)


def test_mock_host_cli_defaults_close_silent_links(capsys):
    from geviso import cli
    from geviso.mock import cli as mock_cli

    parser = cli.build_parser()
    args = parser.parse_args(["mock-host"])
    assert args.read_timeout == 60 and args.max_echo_failures == 2 and args.echo_timeout == 5
    options = mock_cli._host_options(args)
    assert options["read_timeout"] == 60 and options["max_echo_failures"] == 2
    args = parser.parse_args(["mock-host", "--read-timeout", "0"])
    assert mock_cli._host_options(args)["read_timeout"] is None  # 0: never


def test_the_mock_host_command_drops_stalled_sockets_so_good_clients_get_in():
    from test_cli import MockHostProcess

    proc = MockHostProcess("--max-connections", "2", "--read-timeout", "0.5", "--log-level", "WARNING")
    stalled: list[socket.socket] = []
    links: list[geviso.Connection] = []

    def echo() -> dict[str, str]:
        link = geviso.Connection(proc.address, spec, send_timeout=2)
        links.append(link)
        return link.connect().send({"t": "0800", "70": "301"})

    try:
        stalled = [stalled_socket(proc.address[1]) for _ in range(2)]
        answer = None
        with gevent.Timeout(20, AssertionError("a good client never got in")):
            while answer is None:
                gevent.sleep(0.2)
                try:
                    answer = echo()
                except geviso.GevisoError:  # refused while the stalled sockets hold every link
                    continue
        assert answer["39"] == "00"
        assert proc.stop() == 0
        stats = proc.stats()
        assert stats["silent_closed"] == "2"
    finally:
        for link in links:
            if link.state not in ("new", "closed"):
                link.fail("test over")
        for sock in stalled:
            sock.close()
        proc.kill()


@pytest.mark.parametrize("trickle", ["a frame that never completes", "one byte at a time"])
def test_the_mock_host_command_closes_a_trickling_link_at_its_read_timeout(trickle):
    """Bytes that make no whole frame are no sign of life: ``--read-timeout`` closes the
    link however steadily they come (no echoes to catch it)."""
    from test_cli import MockHostProcess

    proc = MockHostProcess("--read-timeout", "0.5", "--log-level", "WARNING")
    # The header says 100 bytes; 0.1 s a byte, they would take 10 s to arrive.
    wire = b"\x00\x64" + b"0200" + b"0" * 96
    sock = socket.create_connection(proc.address)
    sock.settimeout(0.1)
    started = time.monotonic()
    closed_after = None
    try:
        for i in range(len(wire) if trickle == "one byte at a time" else 3):
            try:
                sock.sendall(wire[i : i + 1])
                if sock.recv(10) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except OSError:  # reset by the host
                closed_after = time.monotonic() - started
                break
        else:
            sock.settimeout(10)
            try:
                assert sock.recv(10) == b""
            except OSError:
                pass
            closed_after = time.monotonic() - started
        assert closed_after is not None and closed_after < 8  # 0.5 s and generous slack, not 10 s
        assert proc.stop() == 0
        assert proc.stats()["silent_closed"] == "1"
    finally:
        sock.close()
        proc.kill()


def test_a_tls_client_silent_in_its_handshake_is_dropped_at_the_read_timeout(certs):
    """The read timeout bounds the TLS handshake too (it was a fixed 10 s)."""
    from geviso import tls

    context = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key)
    with geviso.MockHost(("127.0.0.1", 0), tls=context, read_timeout=0.5) as host:
        assert host.handshake_timeout == 0.5
        sock = socket.create_connection(host.address)
        sock.sendall(b"\x16\x03")  # the first bytes of a ClientHello, then nothing
        sock.settimeout(8)
        started = time.monotonic()
        try:
            assert sock.recv(10) == b""
        except OSError:
            pass  # reset: closed as well
        finally:
            sock.close()
        assert time.monotonic() - started < 6  # 0.5 s and generous slack, not 10 s
