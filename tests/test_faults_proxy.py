"""The fault proxy, fault by fault: what a single Connection sees, and that it copes.

Each test arms one fault on a real link (client -> proxy -> echo host) and checks the
typed outcome: the response, or a geviso error within the timeout, never a hang; the
link stays usable after a fault it can survive, and fails fast after one it cannot.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.lock
import gevent.pool
import pytest
from conftest import EchoHost, wait_until
from faultproxy import KINDS, FaultProxy
from iso8583.specs import default as spec

import geviso
from geviso.errors import ConnectionClosed, DecodeError, FramingError, RemoteProtocolError, SendTimeout

FRAMING = geviso.framing.binary(2, max_length=4096)


@pytest.fixture
def proxy(echo_host: EchoHost) -> Iterator[FaultProxy]:
    with FaultProxy(echo_host.address, framing=FRAMING, seed=8) as p:
        yield p


class Client:
    """A connection through the proxy that keeps every error reported to on_error."""

    def __init__(self, proxy: FaultProxy, **options: Any) -> None:
        self.errors: list[BaseException] = []
        options.setdefault("send_timeout", 1.0)
        self.conn = geviso.Connection(
            proxy.address, spec, framing=FRAMING, on_error=self.errors.append, **options
        ).connect()

    def send(self, **fields: str) -> dict[str, str]:
        return self.conn.send({"t": "0200", "4": "000000001000", **fields})


def test_clean_link_forwards_every_frame(proxy: FaultProxy) -> None:
    client = Client(proxy)
    results = [gevent.spawn(client.send, **{"37": "%012d" % i}) for i in range(200)]
    gevent.joinall(results, timeout=10, raise_error=True)
    assert sorted(g.value["37"] for g in results) == ["%012d" % i for i in range(200)]
    assert proxy.forwarded["client"] == proxy.forwarded["host"] == 200
    assert not proxy.counts and not client.errors
    client.conn.close()


def test_latency_delays_the_response(proxy: FaultProxy) -> None:
    proxy.latency = (0.2, 0.2)
    client = Client(proxy)
    proxy.arm("latency")
    started = time.monotonic()
    assert client.send()["39"] == "00"
    assert time.monotonic() - started >= 0.2
    assert proxy.counts["latency"] == 1


@pytest.mark.parametrize("to", ["client", "host"])
def test_split_frames_are_reassembled(proxy: FaultProxy, to: str) -> None:
    client = Client(proxy)
    proxy.arm("split", to=to, count=3)
    for i in range(3):
        assert client.send(**{"37": "%012d" % i})["37"] == "%012d" % i
    assert proxy.counts["split"] == 3 and not client.errors


def test_merged_frames_are_each_matched(proxy: FaultProxy) -> None:
    proxy.merge, proxy.merge_wait = (8, 8), 0.2
    client = Client(proxy)
    proxy.arm("merge", count=1)
    results = [gevent.spawn(client.send, **{"37": "%012d" % i}) for i in range(8)]
    gevent.joinall(results, timeout=5, raise_error=True)
    assert [g.value["37"] for g in results] == ["%012d" % i for i in range(8)]
    assert proxy.counts["merge"] == 1 and not client.errors


def test_duplicate_response_is_reported_not_matched_twice(proxy: FaultProxy) -> None:
    client = Client(proxy)
    proxy.arm("duplicate")
    first = client.send(**{"37": "000000000001"})
    assert wait_until(lambda: client.errors)
    assert isinstance(client.errors[0], RemoteProtocolError) and "unmatched" in str(client.errors[0])
    second = client.send(**{"37": "000000000002"})
    assert (first["37"], second["37"]) == ("000000000001", "000000000002")
    assert client.conn.stats.unmatched == 1 and len(client.errors) == 1


def test_duplicate_request_gets_one_answer(proxy: FaultProxy, echo_host: EchoHost) -> None:
    client = Client(proxy)
    proxy.arm("duplicate", to="host")
    assert client.send()["39"] == "00"
    assert wait_until(lambda: len(echo_host.received) == 2)
    assert wait_until(lambda: client.conn.stats.unmatched == 1)
    assert client.send()["39"] == "00"


def test_corrupt_response_times_out_and_the_link_goes_on(proxy: FaultProxy) -> None:
    client = Client(proxy, send_timeout=0.3)
    proxy.arm("corrupt")
    with pytest.raises(SendTimeout):
        client.send()
    assert [type(e) for e in client.errors] == [DecodeError]
    assert client.send()["39"] == "00"


def test_corrupt_request_times_out_and_the_link_goes_on(proxy: FaultProxy, echo_host: EchoHost) -> None:
    client = Client(proxy, send_timeout=0.3)
    proxy.arm("corrupt", to="host")
    with pytest.raises(SendTimeout):
        client.send()
    assert client.send()["39"] == "00"
    assert not client.conn.closed and not echo_host.links[0].closed


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_cut_while_in_flight_fails_fast(proxy: FaultProxy, rst: bool) -> None:
    client = Client(proxy, send_timeout=10)
    proxy.arm("rst" if rst else "fin")  # strikes when the response reaches the proxy
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as info:
        client.send()
    assert time.monotonic() - started < 5
    assert info.value.sent
    assert client.conn.closed
    assert proxy.counts["rst" if rst else "fin"] == 1
    assert wait_until(lambda: not proxy.links)


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_cut_of_an_idle_link_closes_it(proxy: FaultProxy, rst: bool) -> None:
    client = Client(proxy)
    assert proxy.wait_links(1)
    assert proxy.cut(rst=rst) == 1
    assert client.conn.wait_closed(5)
    with pytest.raises(ConnectionClosed):
        client.send()


def test_oversize_header_fails_the_link_at_once(proxy: FaultProxy) -> None:
    client = Client(proxy, send_timeout=10)
    proxy.arm("oversize")
    # The response goes out first, then the bad header; when both come in one read,
    # the decoder fails the link before handing the response over.
    started = time.monotonic()
    try:
        assert client.send()["39"] == "00"
    except ConnectionClosed as exc:
        assert exc.sent and time.monotonic() - started < 5
    assert client.conn.wait_closed(5)
    assert wait_until(lambda: client.errors)
    assert isinstance(client.errors[0], FramingError)
    assert isinstance(client.conn.failure, FramingError)


def test_garbage_ends_in_a_typed_error(proxy: FaultProxy) -> None:
    proxy.garbage_size = (16, 16)
    client = Client(proxy, send_timeout=0.5)
    proxy.arm("garbage")
    assert client.send()["39"] == "00"
    # After garbage the stream is out of step: every later request gets a typed error
    # (or, by chance, its answer), never a hang.
    for _ in range(3):
        try:
            client.send()
        except (SendTimeout, ConnectionClosed):
            pass
    assert client.errors or client.conn.closed
    assert all(isinstance(e, (FramingError, DecodeError, RemoteProtocolError)) for e in client.errors)


def test_stall_keeps_the_socket_open_and_forwards_nothing(proxy: FaultProxy, echo_host: EchoHost) -> None:
    client = Client(proxy, send_timeout=0.3)
    assert proxy.wait_links(1)
    proxy.stall()
    with pytest.raises(SendTimeout):
        client.send()
    assert not client.conn.closed and not echo_host.received
    client.conn.close(timeout=1)
    assert wait_until(lambda: not proxy.links)


def test_random_faults_with_a_seed_inject_every_kind(echo_host: EchoHost) -> None:
    rates = {kind: 0.01 for kind in KINDS if kind not in ("fin", "rst", "stall")}
    host_rates = {kind: 0.01 for kind in ("latency", "split", "merge", "duplicate", "corrupt")}
    outcomes: collections.Counter[str] = collections.Counter()
    links: list[geviso.Connection] = []
    lock = gevent.lock.Semaphore()

    def link() -> geviso.Connection:
        with lock:
            if not links or links[-1].closed:
                conn = geviso.Connection(proxy.address, spec, framing=FRAMING)
                # A link out of step after garbage is failed by its first decode error.
                conn.on_error = lambda exc: conn.fail(exc) if isinstance(exc, DecodeError) else None
                links.append(conn.connect())
            return links[-1]

    def one(i: int) -> None:
        try:
            link().send({"t": "0200", "37": "%012d" % i}, timeout=0.5)
            outcomes["ok"] += 1
        except geviso.GevisoError as exc:
            outcomes[type(exc).__name__] += 1

    with FaultProxy(
        echo_host.address, framing=FRAMING, seed=1, rates=rates, host_rates=host_rates, latency=(0.001, 0.005)
    ) as proxy:
        pool = gevent.pool.Pool(20)
        for i in range(2000):
            pool.spawn(one, i)
        assert pool.join(timeout=60)
        for conn in links:
            conn.close(timeout=0)
    assert set(proxy.counts) == set(rates)
    assert sum(outcomes.values()) == 2000
    assert outcomes["ok"] > 1000, outcomes
