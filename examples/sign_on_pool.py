"""A pool of two signed-on links: primary-secondary failover, reconnect and failback.

Each link signs on (0800/001) before the pool uses it and signs off (0800/002) when it
closes. The primary host goes away and comes back; traffic moves to the secondary and
returns, and no request is lost.

Run: python examples/sign_on_pool.py
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from iso8583.specs import default as spec

import geviso

ONLINE = "online"


def sign_on(conn: geviso.Connection) -> None:
    """Runs inside connect(): the pool uses the link only once this returns."""
    response = conn.send({"t": "0800", "70": "001"})
    if response.get("39") != "00":
        raise geviso.errors.Declined(response.get("39", ""))
    conn.status = ONLINE


def sign_off(conn: geviso.Connection) -> None:
    """Runs inside close(), before in-flight requests are drained."""
    conn.send({"t": "0800", "70": "002"}, timeout=2.0)


def factory(address: Any) -> geviso.Connection:
    return geviso.Connection(address, spec, send_timeout=2.0, on_connect=sign_on, on_close=sign_off)


def purchases(pool: geviso.Pool, count: int) -> int:
    """Send ``count`` purchases; the number approved."""
    approved = 0
    for i in range(count):
        response = pool.send({"t": "0200", "2": "4111111111111111", "3": "000000", "4": "%012d" % (100 + i)})
        approved += response["39"] == "00"
    return approved


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("gave up waiting")
        gevent.sleep(0.02)


def main() -> None:
    primary = geviso.MockHost(("127.0.0.1", 0), spec)
    secondary = geviso.MockHost(("127.0.0.1", 0), spec)
    primary.start()
    secondary.start()
    primary_port = primary.address[1]
    addresses = ["127.0.0.1:%d" % primary_port, "127.0.0.1:%d" % secondary.address[1]]
    pool = geviso.Pool(factory, addresses, strategy="primary-secondary", filter=lambda c: c.status == ONLINE,
                       reconnect_wait=0.1, max_reconnect_wait=0.5)
    with pool.connect():
        print(f"pool up: {len(pool.usable)} signed-on links to {', '.join(addresses)}")

        before = primary.stats.received
        print(f"primary answered {purchases(pool, 10)} of 10 (host saw {primary.stats.received - before})")

        primary.stop(timeout=2.0)
        wait_until(lambda: len(pool.usable) == 1)
        print(f"primary gone: degraded={pool.is_degraded}, up={pool.is_up}")
        before = secondary.stats.received
        answered = purchases(pool, 10)
        print(f"failover: secondary answered {answered} of 10 (host saw {secondary.stats.received - before})")

        primary = geviso.MockHost(("127.0.0.1", primary_port), spec)
        primary.start()
        wait_until(lambda: len(pool.usable) == 2)
        print(f"primary back: degraded={pool.is_degraded}")
        before = primary.stats.received
        print(f"failback: primary answered {purchases(pool, 10)} of 10 (host saw {primary.stats.received - before})")

        stats = pool.stats
        print(f"pool stats: matched={stats['matched']} timeouts={stats['timeouts']} reconnects={stats['reconnects']}")
    wait_until(lambda: not primary.connections and not secondary.connections)
    print(f"pool closed: the primary's new link carried {primary.stats.received} messages (sign-on, 10, sign-off)")
    primary.stop()
    secondary.stop()


if __name__ == "__main__":
    main()
