"""Pool promises under careless strategies, slow sign-offs and forks: a strategy's bad
choice falls back to a usable link (never a spin), close(timeout) is a bound, and a
forked child that never used the pool closes it without a byte on the network."""

from __future__ import annotations

import os
import time

import gevent
import gevent.os
import pytest
from conftest import wait_until
from test_pool import Factory, Host, echo

import geviso

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hosts():
    made: list[Host] = []

    def make(n: int = 1) -> list[Host]:
        new = [Host() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for host in made:
        if host.running:
            host.kill()


def test_a_strategy_returning_a_closed_link_it_cached_falls_back_to_a_usable_one(hosts):
    a, b = hosts(2)
    cached: list[geviso.Connection] = []

    def sticky(links, doc):
        if not cached:
            cached.append(links[0])
        return cached[0]  # even after it closed

    with geviso.Pool(Factory(), [a.address, b.address], strategy=sticky, reconnect_wait=30) as pool:
        assert echo(pool, 1)["39"] == "00"
        cached[0].fail("gone")
        assert wait_until(lambda: len(pool.usable) == 1)
        started = time.monotonic()
        for stan in range(2, 12):
            assert echo(pool, stan)["39"] == "00"
        assert time.monotonic() - started < 5
        assert pool.strategy_fallbacks == 10 and pool.stats["strategy_fallbacks"] == 10


@pytest.mark.parametrize(
    "choice",
    [lambda links: "not a link", lambda links: 42, lambda links: object(), lambda links: links[:1]],
    ids=["str", "int", "object", "list"],
)
def test_a_strategy_returning_anything_but_an_offered_link_falls_back(hosts, choice):
    (a,) = hosts(1)
    with geviso.Pool(Factory(), [a.address], strategy=lambda links, doc: choice(links)) as pool:
        assert echo(pool, 1)["39"] == "00"
        assert pool.get() in pool.usable
        assert pool.strategy_fallbacks == 2


def closing_links(pool: geviso.Pool) -> gevent.event.Event:
    """Start closing every link of ``pool`` with its sign-off held: each still looks
    usable but refuses new sends before writing them (``sent=False``). Set the returned
    event to let the sign-offs finish."""
    release = gevent.event.Event()
    for link in pool.usable:
        link.on_close = lambda conn: release.wait(10)
        gevent.spawn(link.close, 10)
    gevent.sleep(0.01)
    return release


@pytest.mark.timeout(10)  # a spin never yields: only this timeout could end it
def test_no_send_spins_when_the_strategy_keeps_choosing_dead_links(hosts):
    a, b = hosts(2)
    pool = geviso.Pool(Factory(), [a.address, b.address], reconnect_wait=30)
    pool.connect()
    dead = pool.usable[0]
    pool.strategy = lambda links, doc: dead  # a link it cached
    try:
        dead.fail("gone")
        assert echo(pool, 1)["39"] == "00"
        pool.usable[0].fail("gone too")
        with pytest.raises(geviso.NoConnections):
            echo(pool, 2)
        assert a.received + b.received == ["000001"]
    finally:
        pool.close(timeout=2)


def test_close_timeout_bounds_an_unanswered_sign_off(hosts):
    (host,) = hosts(1)

    def sign_off(conn):
        host.hold = True
        conn.send({"t": "0800", "70": "002"})  # never answered; send_timeout is 30 s

    factory = Factory(on_close=sign_off, send_timeout=30)
    pool = geviso.Pool(factory, [host.address, host.address])
    pool.connect()
    started = time.monotonic()
    pool.close(timeout=1)
    assert time.monotonic() - started < 2.5  # 1 s and generous slack, not 30 s
    assert pool.closed and pool.connections == []
    assert wait_until(lambda: not host.open_links)


def test_close_timeout_bounds_links_with_requests_in_flight(hosts):
    (host,) = hosts(1)
    host.hold = True
    pool = geviso.Pool(Factory(send_timeout=30), [host.address])
    pool.connect()
    waiting = gevent.spawn(echo, pool, 1)
    assert wait_until(lambda: host.received == ["000001"])
    started = time.monotonic()
    pool.close(timeout=0.5)
    assert time.monotonic() - started < 2.0
    with pytest.raises(geviso.ConnectionClosed) as info:
        waiting.get(timeout=2)
    assert info.value.sent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_closing_in_a_forked_child_that_never_used_the_pool_makes_no_traffic(hosts):
    (host,) = hosts(1)
    signed_on: list[str] = []

    def sign_on(conn):
        signed_on.append("x")
        conn.send({"t": "0800", "70": "001"})

    pool = geviso.Pool(Factory(on_connect=sign_on), [host.address, host.address])
    pool.connect()
    assert host.accepted == 2 and len(host.received) == 2
    pid = os.fork()
    if pid == 0:  # the child: must never return into pytest
        code = 1
        try:
            started = time.monotonic()
            pool.close(timeout=5)
            code = 0 if pool.closed and time.monotonic() - started < 2 else 3
        finally:
            os._exit(code)
    with gevent.Timeout(20):
        _, status = gevent.os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    gevent.sleep(0.3)  # anything the child sent would have arrived by now
    assert host.accepted == 2 and len(host.received) == 2  # no dial, no sign-on, no sign-off
    assert len(host.open_links) == 2  # the parent's links are untouched
    assert echo(pool, 7)["11"] == "000007"
    pool.close(timeout=2)
