"""The server under bad input from many sockets at once, while a good client is served.

Garbage (an HTTP request on the ISO port), oversized length headers, truncated frames,
undecodable messages and slowloris clients (one byte a second). Each bad link ends with
exactly one ``on_error`` report saying why; the well-behaved client meanwhile gets every
answer, no error, and a bounded latency.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any, Callable

import gevent
import gevent.event
import pytest
from conftest import wait_until
from gevent import socket
from iso8583.specs import default as spec

import geviso
import geviso.keepalive
from geviso.codec import Codec
from geviso.errors import DecodeError, FramingError, RemoteProtocolError, SendTimeout

FRAMING = geviso.framing.binary(2, max_length=2048)
READ_TIMEOUT = 1.0
ECHO_TIMEOUT = 0.5
PER_KIND = 30
#: The good client's worst round trip may not exceed this (a generous, loaded-box bound).
LATENCY_BOUND = 1.0

REQUEST = Codec(spec).encode({"t": "0200", "2": "4111111111111111", "4": "000000001000", "11": "000001"})


@pytest.fixture
def host() -> Iterator[Any]:
    reports: list[BaseException] = []
    server = geviso.MockHost(
        ("127.0.0.1", 0),
        spec,
        framing=FRAMING,
        read_timeout=READ_TIMEOUT,
        on_read_timeout=geviso.keepalive.echo_handler(ECHO_TIMEOUT),
        on_error=reports.append,
    )
    server.reports = reports
    server.start()
    yield server
    server.stop(timeout=2)


def bad_client(address: tuple[str, int], behave: Callable[[Any], None]) -> float:
    """Run one raw bad client; how long until its link ended (by it or the server)."""
    started = time.monotonic()
    sock = socket.create_connection(address)
    try:
        behave(sock)
    except OSError:
        pass  # the server reset the link under us
    finally:
        sock.close()
    return time.monotonic() - started


def until_closed(sock: Any) -> None:
    """Read (and ignore) what the server sends until it closes the link."""
    while sock.recv(4096):
        pass


def garbage(sock: Any) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: iso-host\r\n\r\n")
    until_closed(sock)


def oversize(sock: Any) -> None:
    sock.sendall(FRAMING.pack_length(60000) + REQUEST)
    until_closed(sock)


def truncated(sock: Any) -> None:
    sock.sendall(FRAMING.encode(REQUEST)[: len(REQUEST) // 2])
    sock.shutdown(socket.SHUT_WR)
    until_closed(sock)


def undecodable(sock: Any) -> None:
    sock.sendall(FRAMING.encode(b"\xff" * 30))
    sock.shutdown(socket.SHUT_WR)
    until_closed(sock)


def slowloris(sock: Any) -> None:
    """A valid request, one byte a second: it would take a minute to arrive."""
    for byte in FRAMING.encode(REQUEST):
        sock.sendall(bytes([byte]))
        with gevent.Timeout(1.0, False):
            while sock.recv(4096):  # the host's echo: never answered
                pass
            return  # the host closed the link


BAD = {
    "garbage": (garbage, FramingError),
    "oversize": (oversize, FramingError),
    "truncated": (truncated, RemoteProtocolError),
    "undecodable": (undecodable, DecodeError),
    "slowloris": (slowloris, SendTimeout),
}


def test_bad_links_each_reported_once_while_a_good_client_is_served(host: Any) -> None:
    good_errors: list[BaseException] = []
    good = geviso.Connection(host.address, spec, framing=FRAMING, send_timeout=5, on_error=good_errors.append)
    good.connect()
    latencies: list[float] = []
    done = gevent.event.Event()

    def serve_good() -> None:
        n = 0
        while not done.is_set():
            n += 1
            started = time.monotonic()
            response = good.send({"t": "0200", "4": "000000001000", "37": "%012d" % n})
            latencies.append(time.monotonic() - started)
            assert response["37"] == "%012d" % n
            gevent.sleep(0.005)

    runner = gevent.spawn(serve_good)
    jobs = {
        kind: [gevent.spawn(bad_client, host.address, act) for _ in range(PER_KIND)]
        for kind, (act, _) in BAD.items()
    }
    every = [job for kinds in jobs.values() for job in kinds]
    gevent.joinall(every, timeout=20)
    done.set()
    runner.join(timeout=10)

    assert all(job.successful() for job in every), [job.exception for job in every if job.exception]
    # Every bad link ended, the slow ones by the server within read timeout + echo timeout.
    slowest = max(job.value for job in jobs["slowloris"])
    assert slowest < READ_TIMEOUT + ECHO_TIMEOUT + 3
    assert wait_until(lambda: len(host.reports) >= PER_KIND * len(BAD))
    gevent.sleep(0.2)  # no second report arrives late
    kinds = collections.Counter(type(exc).__name__ for exc in host.reports)
    expected = collections.Counter()
    for _, error in BAD.values():
        expected[error.__name__] += PER_KIND
    assert kinds == expected
    assert wait_until(lambda: host.connections == {next(iter(host.connections))} and len(host.connections) == 1)

    assert runner.successful(), runner.exception
    assert not good_errors and not good.closed
    assert len(latencies) > 20
    assert max(latencies) < LATENCY_BOUND, max(latencies)
    good.close()


def test_plaintext_garbage_floods_do_not_stop_accepting(host: Any) -> None:
    """200 garbage sockets at once; then a new client still connects and is answered."""
    jobs = [gevent.spawn(bad_client, host.address, garbage) for _ in range(200)]
    gevent.joinall(jobs, timeout=20)
    assert all(job.successful() for job in jobs)
    with geviso.Connection(host.address, spec, framing=FRAMING, send_timeout=5) as conn:
        assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
    assert wait_until(lambda: len(host.reports) == 200)
    assert all(isinstance(exc, FramingError) for exc in host.reports)
