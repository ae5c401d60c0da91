"""Connection life cycle over real loopback sockets: connect, close, failure, handlers, timers."""

from __future__ import annotations

import socket as stdlib_socket
import time

import gevent
import gevent.event
import pytest
from conftest import loops_ended, respond, wait_until
from gevent import socket
from iso8583.specs import default as spec

import geviso
from geviso import errors

ECHO = {"t": "0800", "70": "301"}


def refused_address():
    """A loopback port nobody listens on."""
    s = stdlib_socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return ("127.0.0.1", port)


# -- before connect ---------------------------------------------------------------------
def test_send_close_reply_write_before_connect_fail_clearly_never_hang(echo_host):
    conn = geviso.Connection(echo_host.address, spec)
    with gevent.Timeout(5):
        with pytest.raises(geviso.NotConnected, match="connect"):
            conn.send(ECHO)
        with pytest.raises(geviso.NotConnected, match="connect"):
            conn.close()
        with pytest.raises(geviso.NotConnected):
            conn.reply({"t": "0810", "11": "000001"})
        with pytest.raises(geviso.NotConnected):
            conn.write(b"\x00\x00")
    assert conn.state == "new" and not conn.closed
    conn.connect()  # still usable afterwards
    assert conn.send(ECHO)["t"] == "0810"
    conn.close()


def test_constructing_opens_nothing(echo_host):
    geviso.Connection(echo_host.address, spec)
    gevent.sleep(0.05)
    assert echo_host.links == []


def test_address_forms(echo_host):
    host, port = echo_host.address
    for address in (f"{host}:{port}", (host, port), f"tcp://{host}:{port}"):
        with geviso.Connection(address, spec) as conn:
            assert conn.address == (host, port)
    with pytest.raises(geviso.ConfigurationError):
        geviso.Connection("no-port-here", spec)


# -- connect ----------------------------------------------------------------------------
def test_connect_refused_raises_connect_failed():
    conn = geviso.Connection(refused_address(), spec, connect_timeout=5)
    with gevent.Timeout(10):
        with pytest.raises(geviso.ConnectFailed, match="failed"):
            conn.connect()
    assert conn.closed and conn.state == "closed"
    with pytest.raises(geviso.ConnectionClosed):
        conn.send(ECHO)
    conn.close()  # idempotent on a failed connection


def test_connect_timeout_raises_connect_failed():
    """A listener whose accept queue is full drops our SYN: the dial hangs until the timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
    gevent.sleep(0.05)
    conn = geviso.Connection(listener.getsockname(), spec, connect_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(geviso.ConnectFailed):
            conn.connect()
        assert time.monotonic() - started < 5
        assert conn.state == "closed"
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_connect_timeout_covers_a_stalled_tls_handshake(raw_peer, certs):
    stall = gevent.event.Event()
    peer = raw_peer(lambda sock: stall.wait(10))  # accepts TCP, never speaks TLS
    tls = geviso.tls.client_context(cafile=certs.ca)
    conn = geviso.Connection(peer.address, spec, tls=tls, connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(geviso.ConnectFailed, match="timed out"):
        conn.connect()
    assert time.monotonic() - started < 5
    stall.set()


def test_on_connect_signs_on_then_on_established_runs(echo_host, links):
    order = []

    def on_connect(conn):
        order.append(("on_connect", conn.send({"t": "0800", "70": "001"})["39"]))
        conn.status = "online"

    conn = links(
        echo_host.address,
        on_connect=on_connect,
        on_established=lambda conn: order.append(("on_established", conn.status, conn.ready)),
    )
    assert wait_until(lambda: len(order) == 2)
    assert order == [("on_connect", "00"), ("on_established", "online", True)]
    assert conn.status == "online" and conn.ready


def test_on_connect_error_fails_connect_and_the_link(echo_host):
    failed, closed = [], []

    def on_connect(conn):
        raise RuntimeError("sign-on refused")

    conn = geviso.Connection(
        echo_host.address, spec, on_connect=on_connect,
        on_failed=lambda c, exc: failed.append(exc), on_closed=closed.append,
    )
    with pytest.raises(geviso.ConnectFailed, match="sign-on refused") as info:
        conn.connect()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert conn.state == "closed"
    assert wait_until(lambda: failed and closed)
    assert isinstance(failed[0], RuntimeError)
    assert loops_ended(conn)


def test_connect_twice_is_refused(echo_host, links):
    conn = links(echo_host.address)
    with pytest.raises(geviso.GevisoError, match="connect"):
        conn.connect()


def test_close_while_connecting_makes_connect_fail(raw_peer, certs):
    stall = gevent.event.Event()
    peer = raw_peer(lambda sock: stall.wait(10))
    conn = geviso.Connection(peer.address, spec, tls=geviso.tls.client_context(cafile=certs.ca), connect_timeout=5)
    dialler = gevent.spawn(conn.connect)
    assert wait_until(lambda: conn.state == "connecting")
    with pytest.raises(geviso.NotConnected):
        conn.send(ECHO)
    conn.close()
    stall.set()  # the peer goes away; connect() returns, sees the close, gives up
    with pytest.raises(geviso.ConnectFailed):
        dialler.get(timeout=10)
    assert conn.state == "closed"


# -- close ------------------------------------------------------------------------------
def test_context_manager_connects_and_closes(echo_host):
    closed = []
    with geviso.Connection(echo_host.address, spec, on_closed=closed.append) as conn:
        assert conn.state == "open"
        assert conn.send(ECHO)["t"] == "0810"
    assert conn.state == "closed" and conn.closed
    assert wait_until(lambda: closed == [conn])
    assert loops_ended(conn)
    with pytest.raises(geviso.ConnectionClosed):
        conn.send(ECHO)


def test_close_is_idempotent_and_concurrent_closes_all_return(echo_host, held, links):
    closed = []
    conn = links(echo_host.address, on_closed=closed.append)
    job = gevent.spawn(conn.send, ECHO)
    assert wait_until(lambda: held.items)
    closers = [gevent.spawn(conn.close) for _ in range(3)]
    assert wait_until(lambda: conn.state == "closing")
    held.release()
    gevent.joinall(closers, timeout=10, raise_error=True)
    assert all(c.ready() for c in closers)
    conn.close()
    conn.close()
    assert job.get()["t"] == "0810"
    assert wait_until(lambda: closed)
    gevent.sleep(0.05)
    assert closed == [conn]  # on_closed ran once


def test_graceful_close_drains_ten_pending_sends(echo_host, held, links):
    failed = []
    conn = links(echo_host.address, send_timeout=10, on_failed=lambda c, e: failed.append(e))
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}) for i in range(10)]
    assert wait_until(lambda: len(held.items) == 10)
    closer = gevent.spawn(conn.close)
    assert wait_until(lambda: conn.state == "closing")
    with pytest.raises(geviso.ConnectionClosed):  # new sends are refused while closing
        conn.send(ECHO)
    assert not closer.ready()
    held.release()
    closer.get(timeout=10)
    assert [j.get(timeout=1)["4"] for j in jobs] == ["%012d" % i for i in range(10)]
    assert conn.state == "closed" and failed == []
    assert loops_ended(conn)


def test_close_timeout_fails_what_is_still_pending(echo_host, held, links):
    conn = links(echo_host.address, send_timeout=30)
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}) for i in range(5)]
    assert wait_until(lambda: len(held.items) == 5)
    started = time.monotonic()
    conn.close(timeout=0.1)
    assert time.monotonic() - started < 5
    gevent.joinall(jobs, timeout=5)
    for job in jobs:
        assert isinstance(job.exception, geviso.ConnectionClosed) and job.exception.sent is True
    assert loops_ended(conn)


def test_sign_off_inside_on_close_gets_its_answer(echo_host, links):
    answers = []

    def on_close(conn):
        answers.append(conn.send({"t": "0800", "70": "002"}))
        conn.status = "offline"

    conn = links(echo_host.address, on_close=on_close)
    conn.close()
    assert len(answers) == 1 and answers[0]["t"] == "0810" and answers[0]["70"] == "002"
    assert echo_host.received[-1]["70"] == "002"
    assert conn.status == "offline" and conn.state == "closed"


def test_on_close_error_is_raised_after_the_link_is_closed(echo_host, links):
    def on_close(conn):
        raise ValueError("sign-off failed")

    conn = links(echo_host.address, on_close=on_close)
    with pytest.raises(geviso.GevisoError, match="on_close raised ValueError") as info:
        conn.close()
    assert isinstance(info.value.__cause__, ValueError)
    assert conn.state == "closed"
    assert loops_ended(conn)
    conn.close()  # and a second close is quiet


def test_other_greenlets_cannot_send_while_on_close_runs(echo_host, links):
    seen = []

    def on_close(conn):
        other = gevent.spawn(conn.send, ECHO)
        other.join(5)
        seen.append(other.exception)
        seen.append(conn.send(ECHO)["t"])  # the closer itself still may

    conn = links(echo_host.address, on_close=on_close)
    conn.close()
    assert isinstance(seen[0], geviso.ConnectionClosed) and seen[1] == "0810"


def test_close_flushes_queued_replies_before_the_socket_goes(echo_host, links):
    """A reply queued just before close() still reaches the peer."""
    got = []
    echo_host.answer = lambda c, d: got.append(d)
    conn = links(echo_host.address)
    for i in range(200):
        conn.reply({"t": "0810", "11": "%06d" % (i + 1), "39": "00"})
    conn.close()
    assert wait_until(lambda: len(got) == 200)


# -- failure ----------------------------------------------------------------------------
def test_peer_close_fails_all_pending_sends_at_once(echo_host, held, links):
    failed, closed = [], []
    conn = links(
        echo_host.address, send_timeout=30, on_failed=lambda c, e: failed.append(e), on_closed=closed.append
    )
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}) for i in range(200)]
    assert wait_until(lambda: len(held.items) == 200)
    started = time.monotonic()
    echo_host.links[0].fail("host goes away")
    gevent.joinall(jobs, timeout=10)
    assert time.monotonic() - started < 5  # not the 30 s send timeout
    for job in jobs:
        assert isinstance(job.exception, geviso.ConnectionClosed)
        assert job.exception.sent is True  # it was written: do not resend blindly
    assert conn.state == "closed" and conn.in_flight == 0
    assert wait_until(lambda: failed and closed)
    assert isinstance(failed[0], geviso.ConnectionClosed)
    assert loops_ended(conn)
    with pytest.raises(geviso.ConnectionClosed):
        conn.send(ECHO)


def test_requests_never_written_fail_with_sent_false(raw_peer, links):
    """The writer is stuck on a peer that does not read: queued requests never left."""
    go_away = gevent.event.Event()

    def handle(sock):
        go_away.wait(20)
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # with unread data: a reset

    peer = raw_peer(handle)
    peer.server.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    conn = links(peer.address, send_timeout=30)
    conn._sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
    body = {"t": "0200", "48": "x" * 999}
    first = [gevent.spawn(conn.send, dict(body, **{"4": "%012d" % i})) for i in range(200)]
    assert wait_until(lambda: conn.in_flight == 200 and not conn._outbox)  # the writer holds them all
    second = [gevent.spawn(conn.send, dict(body, **{"4": "%012d" % (i + 200)})) for i in range(20)]
    assert wait_until(lambda: len(conn._outbox) == 20)  # queued behind the stuck sendall
    go_away.set()
    gevent.joinall(first + second, timeout=10)
    assert all(isinstance(j.exception, geviso.ConnectionClosed) for j in first + second)
    assert all(j.exception.sent for j in first)
    assert not any(j.exception.sent for j in second)


def test_clean_peer_close_with_nothing_pending_is_not_a_failure(echo_host, links):
    failed, closed = [], []
    conn = links(echo_host.address, on_failed=lambda c, e: failed.append(e), on_closed=closed.append)
    conn.send(ECHO)
    echo_host.links[0].close()
    assert wait_until(lambda: closed)
    gevent.sleep(0.05)
    assert failed == [] and conn.state == "closed" and conn.failure is None


def test_fail_triggers_failure_handlers(echo_host, held, links):
    failed, closed = [], []
    conn = links(echo_host.address, on_failed=lambda c, e: failed.append(e), on_closed=closed.append)
    job = gevent.spawn(conn.send, ECHO)
    assert wait_until(lambda: held.items)
    conn.fail("operator said so")
    with pytest.raises(geviso.ConnectionClosed, match="operator said so"):
        job.get(timeout=5)
    assert wait_until(lambda: failed and closed)
    assert str(failed[0]) == "operator said so" and closed == [conn]
    assert str(conn.failure) == "operator said so"
    conn.fail("again")  # no second round of handlers
    conn.close()
    gevent.sleep(0.05)
    assert len(failed) == 1 and len(closed) == 1


def test_our_close_runs_on_closed_but_not_on_failed(echo_host, links):
    failed, closed, established = [], [], []
    conn = links(
        echo_host.address,
        on_failed=lambda c, e: failed.append(e),
        on_closed=closed.append,
        on_established=established.append,
    )
    conn.close()
    assert wait_until(lambda: closed)
    assert established == [conn] and failed == []


def test_server_side_from_socket_runs_on_established(echo_host):
    established = []
    echo_host.options["on_established"] = established.append
    with geviso.Connection(echo_host.address, spec) as conn:
        conn.send(ECHO)
    assert wait_until(lambda: established)
    assert established[0].server_side


def test_handler_racing_the_close_is_not_reported_as_an_error(echo_host, links):
    reported, outcome = [], []
    release = gevent.event.Event()

    def on_inbound(conn, doc):
        release.wait(5)
        try:
            conn.reply(respond(doc))  # the link is closed by now
        except geviso.ConnectionClosed as exc:
            outcome.append(exc)
            raise

    conn = links(echo_host.address, on_inbound=on_inbound, on_error=reported.append)
    conn.send(ECHO)
    echo_host.links[0].reply({"t": "0800", "11": "000099", "70": "301"})
    assert wait_until(lambda: conn.stats.inbound == 1)
    conn.close()
    release.set()
    assert wait_until(lambda: outcome)
    gevent.sleep(0.05)
    assert reported == [] and conn.stats.errors == 0


# -- timers -----------------------------------------------------------------------------
def test_idle_ping_repeats_while_idle_and_does_not_close(echo_host, links):
    pings = []
    conn = links(echo_host.address, idle_time=0.05, on_ping=pings.append)
    assert wait_until(lambda: len(pings) >= 3)
    assert conn.state == "open" and all(p is conn for p in pings)
    assert conn.send(ECHO)["t"] == "0810"


def test_idle_ping_handler_sends_echo_tests(echo_host, links):
    answers = []
    conn = links(echo_host.address, idle_time=0.05, on_ping=lambda c: answers.append(c.send(ECHO)))
    assert wait_until(lambda: len(answers) >= 3)
    assert all(a["t"] == "0810" for a in answers)
    assert conn.state == "open"


def test_slow_ping_handler_is_not_run_twice_at_once(echo_host, links):
    running, most = 0, 0

    def on_ping(conn):
        nonlocal running, most
        running += 1
        most = max(most, running)
        gevent.sleep(0.2)
        running -= 1

    links(echo_host.address, idle_time=0.02, on_ping=on_ping)
    gevent.sleep(0.5)
    assert most == 1


def test_read_timeout_handler_repeats_and_does_not_close(echo_host, links):
    fired = []
    conn = links(echo_host.address, read_timeout=0.05, on_read_timeout=fired.append)
    assert wait_until(lambda: len(fired) >= 3)
    assert conn.state == "open"
    assert conn.send(ECHO)["t"] == "0810"


def test_timer_loop_ends_with_the_link(echo_host, links):
    conn = links(echo_host.address, idle_time=0.05, on_ping=lambda c: None, read_timeout=0.05,
                 on_read_timeout=lambda c: None)
    assert len(conn._greenlets) == 3
    conn.close()
    assert loops_ended(conn)


def test_errors_are_one_hierarchy():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.GevisoError)
    assert issubclass(errors.SendTimeout, TimeoutError)
    assert issubclass(errors.DecodeError, errors.SafeError)
