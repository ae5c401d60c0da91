"""Pool: links to several real loopback hosts, kept up, failed over, redialled on schedule."""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Optional

import gevent
import gevent.event
import gevent.os
import gevent.socket
import gevent.subprocess
import pytest
from conftest import wait_until
from iso8583.specs import default as spec

import geviso
from geviso.codec import response_mti

pytestmark = pytest.mark.timeout(60)


def respond(doc: dict[str, str]) -> dict[str, str]:
    response = {k: v for k, v in doc.items() if k not in ("p", "1")}
    response["t"] = response_mti(doc["t"])
    response["39"] = "00"
    return response


class Host:
    """A loopback card host that can be killed and restarted on the same port.

    Counts every request it receives (by STAN) and answers after ``delay`` seconds;
    with ``hold`` set it never answers.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.received: list[str] = []
        self.links: list[geviso.Connection] = []
        self.accepted = 0
        self.delay = 0.0
        self.hold = False
        self.listener: Any = None
        self.acceptor: Optional[gevent.Greenlet] = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = gevent.socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.listener = listener
        self.acceptor = gevent.spawn(self._accept, listener)

    def _accept(self, listener: Any) -> None:
        # Each link is registered the moment it is accepted, so kill() never misses one.
        while True:
            sock, _ = listener.accept()
            self.accepted += 1
            self.links.append(geviso.Connection.from_socket(sock, spec, on_inbound=self._inbound))

    def _inbound(self, conn: geviso.Connection, doc: dict[str, str]) -> None:
        self.received.append(doc.get("11", ""))
        if self.hold:
            return
        if self.delay:
            gevent.sleep(self.delay)
        if not conn.closed:
            conn.reply(respond(doc))

    @property
    def running(self) -> bool:
        return self.listener is not None

    def kill(self) -> None:
        """Stop listening and drop every link at once (connection refused from now)."""
        assert self.listener is not None
        self.acceptor.kill()
        self.listener.close()
        self.listener = None
        for link in self.links:
            link.fail("host killed")
        self.links = []

    @property
    def open_links(self) -> list[geviso.Connection]:
        return [link for link in self.links if not link.closed]


@pytest.fixture
def hosts() -> Any:
    made: list[Host] = []

    def make(n: int = 1) -> list[Host]:
        new = [Host() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for host in made:
        if host.running:
            host.kill()


def dead_address() -> str:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Factory:
    """Builds links and remembers when it was called for which address."""

    def __init__(self, fail: Callable[[Any, int], bool] = lambda a, n: False, **options: Any) -> None:
        self.calls: list[tuple[float, Any]] = []
        self.fail = fail
        self.options = {"connect_timeout": 2.0, "send_timeout": 5.0, **options}

    def __call__(self, address: Any) -> geviso.Connection:
        self.calls.append((time.monotonic(), address))
        if self.fail(address, len(self.calls)):
            raise RuntimeError("factory says no")
        return geviso.Connection(address, spec, **self.options)

    def times(self, address: Any) -> list[float]:
        return [t for t, a in self.calls if a == address]


def echo(pool: geviso.Pool, stan: int, **fields: str) -> dict[str, str]:
    return pool.send({"t": "0800", "11": "%06d" % stan, "70": "301", **fields}, timeout=5)


# -- choosing links ---------------------------------------------------------------------


def test_round_robin_spreads_requests_over_every_link(hosts):
    a, b, c = hosts(3)
    with geviso.Pool(Factory(), [a.address, b.address, c.address]) as pool:
        assert len(pool.connections) == 3
        picked = [pool.get().address[1] for _ in range(6)]
        assert picked == [a.port, b.port, c.port] * 2
        for stan in range(1, 31):
            assert echo(pool, stan)["39"] == "00"
    assert (len(a.received), len(b.received), len(c.received)) == (10, 10, 10)


def test_round_robin_skips_links_that_are_down(hosts):
    a, b = hosts(2)
    with geviso.Pool(Factory(), [a.address, dead_address(), b.address], reconnect_wait=10) as pool:
        assert pool.is_up and pool.is_degraded
        assert [pool.get().address[1] for _ in range(4)] == [a.port, b.port] * 2


def test_custom_strategy_gets_the_usable_links_and_the_message(hosts):
    a, b = hosts(2)

    def by_terminal(links, doc):
        return links[1] if doc is not None and doc.get("41") == "TERM0002" else links[0]

    with geviso.Pool(Factory(), [a.address, b.address], strategy=by_terminal) as pool:
        echo(pool, 1, **{"41": "TERM0001"})
        echo(pool, 2, **{"41": "TERM0002"})
        echo(pool, 3, **{"41": "TERM0002"})
        assert pool.get().address[1] == a.port
    assert a.received == ["000001"]
    assert b.received == ["000002", "000003"]


def test_filter_hides_links_that_do_not_pass(hosts):
    a, b = hosts(2)

    def sign_on(conn):
        conn.status = "online" if conn.address[1] == a.port else "offline"

    factory = Factory(on_connect=sign_on)
    with geviso.Pool(factory, [a.address, b.address], filter=lambda c: c.status == "online") as pool:
        assert len(pool.connections) == 2
        assert pool.is_up and pool.is_degraded
        assert {pool.get().address[1] for _ in range(4)} == {a.port}
        for stan in range(1, 5):
            echo(pool, stan)
        assert len(b.received) == 0
        link_b = next(c for c in pool.connections if c.address[1] == b.port)
        link_b.status = "online"
        assert not pool.is_degraded
        assert {pool.get().address[1] for _ in range(4)} == {a.port, b.port}


def test_link_is_usable_only_once_on_connect_has_finished(hosts):
    (a,) = hosts(1)
    signed_on = gevent.event.Event()

    def sign_on(conn):
        signed_on.wait(10)

    pool = geviso.Pool(Factory(on_connect=sign_on), [a.address], min_connections=0)
    try:
        pool.connect(timeout=0.2)
        assert wait_until(lambda: len(a.open_links) == 1)  # dialled, still signing on
        assert not pool.is_up and pool.connections == []
        with pytest.raises(geviso.NoConnections):
            pool.get()
        signed_on.set()
        assert wait_until(lambda: pool.is_up)
        assert echo(pool, 1)["39"] == "00"
    finally:
        pool.close()


def test_primary_secondary_fails_over_and_back(hosts):
    primary, secondary = hosts(2)
    factory = Factory()
    pool = geviso.Pool(
        factory, [primary.address, secondary.address], strategy="primary-secondary", reconnect_wait=0.05, jitter=0
    )
    with pool:
        for stan in range(1, 4):
            echo(pool, stan)
        assert (len(primary.received), len(secondary.received)) == (3, 0)

        primary.kill()
        assert wait_until(lambda: len(pool.usable) == 1)
        for stan in range(4, 7):
            echo(pool, stan)
        assert secondary.received == ["000004", "000005", "000006"]

        primary.start()
        assert wait_until(lambda: len(pool.usable) == 2)
        for stan in range(7, 10):
            echo(pool, stan)
        assert primary.received[-3:] == ["000007", "000008", "000009"]
        assert len(secondary.received) == 3
        assert pool.stats["reconnects"] == 1


# -- keeping links up -------------------------------------------------------------------


def test_killed_host_is_redialled_on_the_backoff_schedule(hosts):
    (host,) = hosts(1)
    factory = Factory()
    wait, cap = 0.1, 0.4
    with geviso.Pool(factory, [host.address], reconnect_wait=wait, max_reconnect_wait=cap, jitter=0) as pool:
        first_link = pool.get()
        killed = time.monotonic()
        host.kill()
        assert wait_until(lambda: not pool.is_up)  # the pool sees it go
        assert wait_until(lambda: len(factory.times(host.address)) >= 5, timeout=10)  # 1 + 4 retries
        attempts = factory.times(host.address)[1:]
        gaps = [attempts[0] - killed] + [b - a for a, b in zip(attempts, attempts[1:])]
        schedule = [0.1, 0.2, 0.4, 0.4]
        for gap, due in zip(gaps, schedule):
            assert gap >= due - 0.03, (gaps, schedule)  # never early: no hammering
            assert gap < due + 1.5, (gaps, schedule)  # and not stuck
        # The factory records an attempt before its dial fails: wait for the 4th failure.
        assert wait_until(lambda: pool.stats["addresses"][0]["failures"] >= 4)
        assert pool.stats["addresses"][0]["state"] in ("waiting", "connecting")

        host.start()
        restarted = time.monotonic()
        assert wait_until(lambda: pool.is_up, timeout=cap + 3)
        assert time.monotonic() - restarted < cap + 3  # back within one backoff step
        assert pool.get() is not first_link
        assert echo(pool, 1)["39"] == "00"
        assert pool.stats["reconnects"] == 1
        assert pool.stats["addresses"][0]["state"] == "up"


def test_jitter_spreads_the_waits_within_its_bounds(hosts):
    address = dead_address()
    factory = Factory()
    pool = geviso.Pool(factory, [address], reconnect_wait=0.05, max_reconnect_wait=0, jitter=0.5, min_connections=0)
    with pool:
        assert wait_until(lambda: len(factory.times(address)) >= 7, timeout=10)
    times = factory.times(address)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 0.025 - 0.01 for gap in gaps), gaps  # 0.05 * (1 - 0.5), fixed: no doubling
    assert len({round(g, 3) for g in gaps}) > 1


def test_factory_errors_reach_on_error_and_the_loop_keeps_going(hosts):
    (host,) = hosts(1)
    errors: list[BaseException] = []
    factory = Factory(fail=lambda address, n: n <= 2)
    pool = geviso.Pool(
        factory, [host.address], reconnect_wait=0.05, jitter=0, min_connections=0, on_error=errors.append
    )
    with pool:
        assert wait_until(lambda: pool.is_up)
        assert len(factory.calls) == 3
        assert wait_until(lambda: len(errors) == 2)
        assert all(isinstance(e, geviso.ConnectFailed) for e in errors)
        assert all(isinstance(e.__cause__, RuntimeError) for e in errors)
        assert str(host.port) in str(errors[0])
        assert pool.stats["addresses"][0]["failures"] == 2
        assert echo(pool, 1)["39"] == "00"


def test_sign_on_failure_reaches_on_error_and_is_retried(hosts):
    (host,) = hosts(1)
    errors: list[BaseException] = []
    tries = []

    def sign_on(conn):
        tries.append(1)
        conn.send({"t": "0800", "70": "001"}, timeout=2)
        if len(tries) == 1:
            raise RuntimeError("sign-on declined")
        conn.status = "online"

    factory = Factory(on_connect=sign_on)
    pool = geviso.Pool(factory, [host.address], reconnect_wait=0.05, min_connections=0, on_error=errors.append)
    with pool:
        assert wait_until(lambda: pool.is_up)
        assert len(tries) == 2
        assert wait_until(lambda: len(errors) == 1)
        assert isinstance(errors[0], geviso.ConnectFailed)
        assert pool.get().status == "online"


def test_connect_below_min_connections_raises_and_the_pool_stays_open_dialling(hosts):
    (host,) = hosts(1)
    dead1, dead2 = dead_address(), dead_address()
    factory = Factory()
    pool = geviso.Pool(factory, [host.address, dead1, dead2], min_connections=2, reconnect_wait=0.05, jitter=0)
    with pytest.raises(geviso.ConnectErrors) as caught:
        pool.connect()
    errors = caught.value.errors
    assert len(errors) == 2
    assert all(isinstance(e, geviso.ConnectFailed) for e in errors)
    assert dead1.split(":")[1] in str(errors[0]) and dead2.split(":")[1] in str(errors[1])
    assert "1 of 3" in str(caught.value)
    # A report, not a death: the pool serves with what it has and keeps dialling.
    assert not pool.closed and pool.is_up
    assert echo(pool, 1)["39"] == "00"
    calls = len(factory.calls)
    assert wait_until(lambda: len(factory.calls) > calls + 2)
    second = Host(port=int(dead1.split(":")[1]))  # the host comes back: the pool finds it
    try:
        assert wait_until(lambda: len(pool.usable) == 2)
    finally:
        pool.close()
        second.kill()
    assert pool.closed
    assert wait_until(lambda: not host.open_links)
    calls = len(factory.calls)
    gevent.sleep(0.3)
    assert len(factory.calls) == calls  # close() stopped every loop
    with pytest.raises(geviso.PoolClosed):
        pool.get()


def test_a_with_block_whose_connect_fails_closes_its_pool():
    factory = Factory()
    pool = geviso.Pool(factory, [dead_address()], reconnect_wait=0.05)
    with pytest.raises(geviso.ConnectErrors):
        with pool:
            pytest.fail("the block must not run")
    assert pool.closed
    calls = len(factory.calls)
    gevent.sleep(0.3)
    assert len(factory.calls) == calls


def test_min_connections_zero_never_fails(hosts):
    address = dead_address()
    factory = Factory()
    pool = geviso.Pool(factory, [address], min_connections=0, reconnect_wait=0.05, max_reconnect_wait=0.1)
    with pool:
        assert not pool.is_up and pool.is_degraded
        with pytest.raises(geviso.NoConnections):
            pool.get()
        with pytest.raises(geviso.NoConnections):
            echo(pool, 1)
        host = Host(port=int(address.split(":")[1]))
        try:
            assert wait_until(lambda: pool.is_up)
            assert echo(pool, 2)["39"] == "00"
        finally:
            host.kill()
    assert host.received == ["000002"]


# -- sending ----------------------------------------------------------------------------


def test_send_moves_on_only_when_the_request_was_not_written(hosts):
    first, second = hosts(2)
    first.hold = True  # takes requests, never answers
    factory = Factory(max_in_flight=1)
    pool = geviso.Pool(factory, [first.address, second.address], strategy="primary-secondary")
    with pool:
        written = gevent.spawn(echo, pool, 1)  # reaches `first`, waits for an answer
        assert wait_until(lambda: first.received == ["000001"])
        queued = gevent.spawn(echo, pool, 2)  # picks `first` too, waits for its only slot
        gevent.sleep(0.05)
        pool.get().fail("link cut")  # cut the link to `first` under both
        with pytest.raises(geviso.ConnectionClosed) as caught:
            written.get(timeout=5)
        assert caught.value.sent is True  # may have reached the host: not resent
        assert queued.get(timeout=5)["11"] == "000002"  # never written: went to `second`
    assert first.received == ["000001"]
    assert second.received == ["000002"]


def test_send_during_a_host_restart_loses_nothing(hosts):
    a, b = hosts(2)
    a.delay = b.delay = 0.005
    factory = Factory()
    outcomes: dict[str, Any] = {}
    stans = iter(range(1, 1_000_000))
    stop = gevent.event.Event()

    def sender() -> None:
        while not stop.is_set():
            stan = "%06d" % next(stans)
            try:
                outcomes[stan] = pool.send({"t": "0200", "11": stan, "4": "000000001000"}, timeout=5)
            except (geviso.ConnectionClosed, geviso.NoConnections) as exc:
                outcomes[stan] = exc
                gevent.sleep(0.01)

    pool = geviso.Pool(factory, [a.address, b.address], reconnect_wait=0.05, max_reconnect_wait=0.1, jitter=0)
    with pool:
        senders = [gevent.spawn(sender) for _ in range(10)]
        assert wait_until(lambda: len(a.received) >= 50)
        a.kill()
        gevent.sleep(0.3)
        a_before, b_before = len(a.received), len(b.received)
        a.start()
        assert wait_until(lambda: len(pool.usable) == 2)
        assert wait_until(lambda: len(a.received) >= a_before + 50 and len(b.received) >= b_before + 50)
        stop.set()
        gevent.joinall(senders, timeout=10, raise_error=True)

    received = collections.Counter(a.received + b.received)
    assert max(received.values()) == 1  # none sent twice
    assert sorted(int(s) for s in outcomes) == list(range(1, len(outcomes) + 1))  # each got an outcome
    ok = [s for s, o in outcomes.items() if isinstance(o, dict)]
    failed = {s: o for s, o in outcomes.items() if not isinstance(o, dict)}
    for stan in ok:
        assert outcomes[stan]["11"] == stan and received[stan] == 1
    for stan, exc in failed.items():
        # a clear error: either possibly delivered (sent=True) or certainly not delivered
        if isinstance(exc, geviso.ConnectionClosed) and exc.sent:
            continue
        assert received[stan] == 0, (stan, exc)
    assert len(ok) >= 200
    assert len(failed) <= 10 + 10  # the requests in flight on the killed link, at most


# -- state, closing, fork ---------------------------------------------------------------


def test_get_before_connect_and_bad_options_raise():
    pool = geviso.Pool(Factory(), ["127.0.0.1:1"])
    with pytest.raises(geviso.NotConnected):
        pool.get()
    with pytest.raises(geviso.ConfigurationError):
        geviso.Pool(Factory(), [])
    with pytest.raises(geviso.ConfigurationError):
        geviso.Pool(Factory(), ["127.0.0.1:1"], min_connections=2)
    with pytest.raises(geviso.ConfigurationError):
        geviso.Pool(Factory(), ["127.0.0.1:1"], strategy="random")
    with pytest.raises(geviso.ConfigurationError):
        geviso.Pool(Factory(), ["127.0.0.1:1"], reconnect_wait=0)


def test_stats_are_plain_data(hosts):
    (host,) = hosts(1)
    dead = dead_address()
    with geviso.Pool(Factory(), [host.address, dead], reconnect_wait=10) as pool:
        stats = json.loads(json.dumps(pool.stats))
    assert stats["reconnects"] == 0 and stats["usable"] == 1 and not stats["closed"]
    up, down = stats["addresses"]
    assert up["address"] == host.address and up["state"] == "up" and up["attempts"] == 1
    assert down["state"] == "waiting" and down["failures"] == 1
    assert "ConnectFailed" in down["last_error"] and 9 < down["next_attempt_in"] <= 11
    assert pool.stats["closed"] and pool.stats["addresses"][0]["state"] == "closed"


def test_close_is_idempotent_graceful_and_stops_every_loop(hosts):
    (host,) = hosts(1)
    host.delay = 0.3
    dead = dead_address()
    factory = Factory()
    pool = geviso.Pool(factory, [host.address, dead], reconnect_wait=0.05, max_reconnect_wait=0.05)
    pool.connect()
    in_flight = gevent.spawn(echo, pool, 1)
    assert wait_until(lambda: host.received == ["000001"])
    pool.close()
    assert in_flight.get(timeout=1)["39"] == "00"  # graceful: the in-flight request finished
    pool.close()
    assert pool.closed and not pool.is_up and pool.connections == []
    assert wait_until(lambda: not host.open_links)
    calls = len(factory.calls)
    gevent.sleep(0.3)
    assert len(factory.calls) == calls
    with pytest.raises(geviso.PoolClosed):
        pool.get()
    with pytest.raises(geviso.PoolClosed):
        echo(pool, 2)
    with pytest.raises(geviso.PoolClosed):
        pool.connect()


def test_close_drops_links_still_signing_on(hosts):
    (host,) = hosts(1)
    never = gevent.event.Event()
    pool = geviso.Pool(Factory(on_connect=lambda c: never.wait()), [host.address], min_connections=0)
    pool.connect(timeout=0.1)
    assert wait_until(lambda: len(host.open_links) == 1)
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 5
    assert wait_until(lambda: not host.open_links)
    assert pool.stats["addresses"][0]["state"] == "closed"


HOST_SCRIPT = """
import sys
import gevent, gevent.server
from iso8583.specs import default as spec
import geviso
from geviso.codec import response_mti

def inbound(conn, doc):
    conn.reply({**{k: v for k, v in doc.items() if k != "p"}, "t": response_mti(doc["t"]), "39": "00"})

def handle(sock, address):
    log("accept")
    conn = geviso.Connection.from_socket(sock, spec, on_inbound=inbound)
    conn.wait_closed()
    log("closed")

def log(event):
    with open(sys.argv[1], "a") as f:
        f.write(event + "\\n")

server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
server.start()
print(server.server_port, flush=True)
gevent.wait()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_dials_its_own_links_and_leaves_the_parents_alone(tmp_path):
    log = tmp_path / "host-events"
    log.write_text("")
    command = [sys.executable, "-c", HOST_SCRIPT, str(log)]
    proc = gevent.subprocess.Popen(command, stdout=gevent.subprocess.PIPE, text=True)

    def events() -> list[str]:
        return log.read_text().split()

    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with geviso.Pool(Factory(), [f"127.0.0.1:{port}"]) as pool:
            parent_link = pool.get()
            assert echo(pool, 1)["39"] == "00"
            pid = gevent.fork()
            if pid == 0:  # the child: must never return into pytest
                code = 1
                try:
                    gevent.sleep(0.3)  # the parent talks meanwhile; nothing inherited may read
                    response = echo(pool, 2)
                    code = 0 if response["39"] == "00" and pool.get() is not parent_link else 2
                finally:
                    os._exit(code)
            for stan in range(10, 30):  # the child must not steal these responses
                assert echo(pool, stan)["11"] == "%06d" % stan
                gevent.sleep(0.01)
            with gevent.Timeout(20):
                _, status = gevent.os.waitpid(pid, 0)  # gevent.fork() watches the child
            assert os.waitstatus_to_exitcode(status) == 0
            assert wait_until(lambda: events() == ["accept", "accept", "closed"]), events()
            # the parent's link was neither closed nor disturbed by the child
            assert pool.get() is parent_link and not parent_link.closed
            assert echo(pool, 3)["11"] == "000003"
            assert events() == ["accept", "accept", "closed"]
    finally:
        proc.kill()
        proc.wait()


# -- careless strategies, bounded close, forks ----------------------------------------------


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
