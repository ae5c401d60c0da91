"""Chaos: 20,000 requests through a Pool of 4 links while the proxy injects every fault.

Client (Pool of 4) -> FaultProxy (every fault at random, seeded) -> MockHost. Each send
must return its own response (STAN and RRN, field 37, both ours) or a typed geviso
error within its timeout plus a small margin. Afterwards: no pending request on any
link, no greenlet beyond the baseline, no socket beyond the pool's, and then none.

Run alone with the figures printed: ``python -m pytest -q -s tests/test_faults_chaos.py``.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
import gevent.pool
from conftest import wait_until
from faultproxy import FaultProxy, live_greenlets, open_fds, sockets_to
from iso8583.specs import default as spec

import geviso
import geviso.keepalive
from geviso.errors import DecodeError

#: Client framing: a small maximum, so an oversized header exists to be sent.
FRAMING = geviso.framing.binary(2, max_length=4096)
SEND_TIMEOUT = 1.0
#: Slack over the send timeout a loaded 2-core machine may need to wake a greenlet.
MARGIN = 3.0
ECHO_TIMEOUT = 0.5
LINKS = 4

#: Probability per response frame (to the client) of each fault.
TO_CLIENT = {
    "latency": 0.01,
    "split": 0.005,
    "merge": 0.005,
    "duplicate": 0.003,
    "corrupt": 0.0005,
    "garbage": 0.0005,
    "oversize": 0.0006,
    "fin": 0.0006,
    "rst": 0.0006,
    "stall": 0.0006,
}
#: Probability per request frame (to the host) of each fault.
TO_HOST = {
    "latency": 0.005,
    "split": 0.003,
    "merge": 0.003,
    "duplicate": 0.002,
    "corrupt": 0.0005,
    "garbage": 0.0002,
    "oversize": 0.0002,
}


@dataclass
class Outcome:
    """What a chaos run did, for the assertions and the closing note."""

    requests: int = 0
    results: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    faults_to_host: collections.Counter[str] = field(default_factory=collections.Counter)
    reported: collections.Counter[str] = field(default_factory=collections.Counter)
    mismatches: list[str] = field(default_factory=list)
    hangs: list[float] = field(default_factory=list)
    worst_overshoot: float = 0.0
    links_made: int = 0
    seconds: float = 0.0
    leaks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"requests={self.requests} in {self.seconds:.1f}s; results={dict(self.results)}; "
            f"faults={dict(self.faults)} (of which to the host: {dict(self.faults_to_host)}); "
            f"errors reported to on_error={dict(self.reported)}; links made={self.links_made}; "
            f"hangs={len(self.hangs)} mismatches={len(self.mismatches)} leaks={len(self.leaks)}; "
            f"worst overshoot of the timeout={self.worst_overshoot:.3f}s"
        )


def chaos(
    requests: int,
    *,
    concurrency: int = 200,
    seed: int = 8583,
    rates: Optional[dict[str, float]] = None,
    fields: Optional[dict[str, str]] = None,
) -> Outcome:
    """Run ``requests`` sends through a Pool of :data:`LINKS` links and a faulty proxy.

    Besides the random faults, each kind is armed once at the start, so every kind
    strikes at least once whatever the dice say. ``fields`` go into every request."""
    out = Outcome(requests=requests)
    host = geviso.MockHost(("127.0.0.1", 0), spec, inline_inbound=True, on_error=lambda exc: None)
    host.start()
    proxy = FaultProxy(
        host.address,
        framing=FRAMING,
        seed=seed,
        rates=TO_CLIENT if rates is None else rates,
        host_rates=TO_HOST if rates is None else {},
        latency=(0.001, 0.05),
    ).start()
    links: list[geviso.Connection] = []
    check = geviso.keepalive.echo_handler(ECHO_TIMEOUT)

    def on_error(conn: geviso.Connection, exc: BaseException) -> None:
        out.reported[type(exc).__name__] += 1
        if isinstance(exc, DecodeError):
            conn.fail(exc)

    def factory(address: Any) -> geviso.Connection:
        conn = geviso.Connection(
            address,
            spec,
            framing=FRAMING,
            send_timeout=SEND_TIMEOUT,
            connect_timeout=2.0,
            idle_time=0.5,
            read_timeout=0.5,
            on_ping=check,
            on_read_timeout=check,
        )
        # Policy: a link that delivers an undecodable frame may be out of step: fail it.
        conn.on_error = lambda exc: on_error(conn, exc)
        links.append(conn)
        return conn

    pool = geviso.Pool(factory, [proxy.address] * LINKS, reconnect_wait=0.05, max_reconnect_wait=0.4)
    pool.connect()
    for kind in TO_CLIENT if rates is None else ():
        proxy.arm(kind)
    counter = iter(range(1, requests + 1))

    def worker() -> None:
        for n in counter:
            stan, rrn = "%06d" % n, "%012d" % n
            started = time.monotonic()
            name = "ok"
            try:
                with gevent.Timeout(SEND_TIMEOUT + MARGIN + 10):
                    request = {"t": "0200", "4": "000000001000", **(fields or {}), "11": stan, "37": rrn}
                    response = pool.send(request, timeout=SEND_TIMEOUT)
                if (response.get("11"), response.get("37"), response.get("t")) != (stan, rrn, "0210"):
                    out.mismatches.append(f"sent {stan}/{rrn}, got {response.get('11')}/{response.get('37')}")
            except geviso.GevisoError as exc:
                name = type(exc).__name__
            except gevent.Timeout:
                name = "hang"
            elapsed = time.monotonic() - started
            out.results[name] += 1
            out.worst_overshoot = max(out.worst_overshoot, elapsed - SEND_TIMEOUT)
            if name == "hang" or elapsed > SEND_TIMEOUT + MARGIN:
                out.hangs.append(elapsed)
            if name == "NoConnections":
                gevent.sleep(0.02)  # every link is reconnecting: back off a little

    started = time.monotonic()
    workers = gevent.pool.Pool(concurrency)
    for _ in range(concurrency):
        workers.spawn(worker)
    workers.join()
    out.seconds = time.monotonic() - started
    out.faults = collections.Counter(proxy.counts)
    out.faults_to_host = collections.Counter({k: n for (d, k), n in proxy.by_direction.items() if d == "host"})
    out.links_made = len(links)

    # Settled: every link either open (and holding one socket) or closed (holding none).
    wait_until(lambda: all(c.state in ("open", "closed") for c in links), timeout=5)
    open_links = [c for c in links if c.state == "open"]
    ours = sockets_to(proxy.address[1])
    if len(open_links) > LINKS or len(ours) != len(open_links):
        out.leaks.append(f"{len(ours)} client sockets for {len(open_links)} open links")
    pool.close(timeout=2)
    proxy.stop()
    host.stop(timeout=2)
    stuck = [c for c in links if c.in_flight]
    if stuck:
        out.leaks.append(f"{len(stuck)} links with pending requests")
    if sockets_to(proxy.address[1]):
        out.leaks.append("client sockets left after close")
    return out


def test_chaos_every_send_answered_or_failed_in_time() -> None:
    # Warm up once so lazily made objects (resolver, hub timers) are in the baseline.
    chaos(200, concurrency=20, rates={})
    greenlets_before = len(live_greenlets())
    fds_before = open_fds()

    out = chaos(20_000)

    if not wait_until(lambda: len(live_greenlets()) <= greenlets_before, timeout=10):
        out.leaks.append(f"{len(live_greenlets()) - greenlets_before} greenlets beyond the baseline")
    if not wait_until(lambda: open_fds() == fds_before, timeout=10):
        out.leaks.append(f"file descriptors {sorted(set(open_fds()) - set(fds_before))} left open")
    print("\nchaos:", out.summary())
    assert sum(out.results.values()) == out.requests
    assert not out.mismatches, out.mismatches[:5]
    assert not out.hangs, out.hangs[:5]
    assert not out.leaks, out.leaks
    assert set(out.results) <= {"ok", "SendTimeout", "ConnectionClosed", "NoConnections"}
    assert set(out.faults) == set(TO_CLIENT), "every kind of fault was injected"
    assert out.results["ok"] > out.requests // 2
