"""Limits that must hold under load: a link's ``max_in_flight`` and a server's
``max_connections``, measured where it matters (on the host's side of the wire)."""

from __future__ import annotations

import random

import gevent
import gevent.event
from conftest import EchoHost, respond, wait_until
from iso8583.specs import default as spec

import geviso
from geviso.errors import ConnectFailed, ConnectionClosed, SendTimeout, TooManyConnections

ECHO = {"t": "0800", "70": "301"}


class Outstanding:
    """Answers each request after a short random delay, and counts how many requests the
    host holds unanswered at once (the client's in-flight as seen on the wire)."""

    def __init__(self, host: EchoHost, delay: tuple[float, float] = (0.0, 0.005)) -> None:
        self.now = self.peak = self.total = 0
        self.delay = delay
        self.rng = random.Random(8)
        host.answer = self.answer

    def answer(self, conn: geviso.Connection, doc: dict[str, str]) -> None:
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)
        gevent.spawn_later(self.rng.uniform(*self.delay), self._reply, conn, doc)

    def _reply(self, conn: geviso.Connection, doc: dict[str, str]) -> None:
        self.now -= 1
        conn.reply(respond(doc))


def test_max_in_flight_holds_under_a_burst_of_10000(echo_host: EchoHost) -> None:
    seen = Outstanding(echo_host)
    conn = geviso.Connection(echo_host.address, spec, max_in_flight=50, send_timeout=60).connect()
    client_peak = 0

    def one(i: int) -> None:
        nonlocal client_peak
        response = conn.send({"t": "0200", "37": "%012d" % i})
        client_peak = max(client_peak, conn.in_flight)
        assert response["37"] == "%012d" % i

    jobs = [gevent.spawn(one, i) for i in range(10_000)]
    gevent.joinall(jobs, timeout=90, raise_error=True)
    assert all(job.successful() for job in jobs)
    assert seen.total == 10_000
    assert 40 <= seen.peak <= 50, "the limit is used and never passed"
    assert client_peak <= 50
    assert conn.in_flight == 0
    conn.close()


def test_a_send_waiting_for_a_slot_times_out_unwritten(echo_host: EchoHost) -> None:
    echo_host.answer = lambda conn, doc: None  # a host that never answers
    conn = geviso.Connection(echo_host.address, spec, max_in_flight=10).connect()
    holders = [gevent.spawn(conn.send, {"t": "0200"}, timeout=2.0) for _ in range(10)]
    assert wait_until(lambda: len(echo_host.received) == 10)
    waiters = [gevent.spawn(conn.send, {"t": "0200"}, timeout=0.3) for _ in range(90)]
    gevent.joinall(holders + waiters, timeout=10)
    assert all(isinstance(job.exception, SendTimeout) for job in holders + waiters)
    assert all("in-flight slot" in str(job.exception) for job in waiters)
    assert len(echo_host.received) == 10, "only requests holding a slot were written"
    assert conn.in_flight == 0
    conn.close(timeout=0.5)


def test_max_connections_holds_under_a_connection_storm() -> None:
    limit, storm = 50, 200
    reports: list[BaseException] = []
    peak = 0

    def established(conn: geviso.Connection) -> None:
        nonlocal peak
        peak = max(peak, len(host.connections))

    host = geviso.MockHost(
        ("127.0.0.1", 0), spec, max_connections=limit, on_error=reports.append, on_established=established
    )
    host.start()
    release = gevent.event.Event()
    outcomes: dict[str, int] = {}

    def client() -> None:
        conn = geviso.Connection(host.address, spec, send_timeout=10, connect_timeout=10)
        try:
            conn.connect()
            conn.send(ECHO)
            name = "served"
        except (ConnectFailed, ConnectionClosed) as exc:
            name = type(exc).__name__
        outcomes[name] = outcomes.get(name, 0) + 1
        if name == "served":
            release.wait()  # hold the link through the storm
        if conn.state == "open":
            conn.close(timeout=1)

    try:
        jobs = [gevent.spawn(client) for _ in range(storm)]
        assert wait_until(lambda: sum(outcomes.values()) == storm, timeout=30), outcomes
        assert outcomes["served"] == limit
        assert peak <= limit and len(host.connections) == limit
        assert host.refused == storm - limit
        assert wait_until(lambda: len(reports) == storm - limit)
        assert all(isinstance(r, TooManyConnections) for r in reports)
        release.set()
        gevent.joinall(jobs, timeout=10, raise_error=True)
        assert wait_until(lambda: not host.connections)
        # Once the storm is over, the host serves again.
        with geviso.Connection(host.address, spec, send_timeout=5) as conn:
            assert conn.send(ECHO)["39"] == "00"
    finally:
        release.set()
        host.stop(timeout=2)


def test_limits_do_not_leak_between_links(echo_host: EchoHost) -> None:
    """Each link has its own in-flight limit: two links carry twice as much at once."""
    seen = Outstanding(echo_host, delay=(0.02, 0.02))
    links = [geviso.Connection(echo_host.address, spec, max_in_flight=20).connect() for _ in range(2)]
    jobs = [gevent.spawn(links[i % 2].send, {"t": "0200"}) for i in range(400)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert 20 < seen.peak <= 40, "more than one link's limit at once, never more than both"
    for link in links:
        link.close()
