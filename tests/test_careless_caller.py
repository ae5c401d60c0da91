"""A careless caller: Connection, Pool, Server, MockHost and StoreAndForward options of
the wrong type, objects used from another thread, raw writes of the wrong kind. Each
gets a one-line geviso error naming the problem when it is made, never an
AttributeError or TypeError later, a greenlet error, or a hang."""

from __future__ import annotations

import threading
from typing import Any, Callable

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iso8583.specs import default as spec

import geviso
from geviso.errors import ConfigurationError, LocalProtocolError, WrongThread

pytestmark = pytest.mark.timeout(60)

ECHO = {"t": "0800", "70": "301"}
#: Values of every shape a caller may hand over by mistake.
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
CONNECTION_OPTIONS = [
    "framing", "send_timeout", "connect_timeout", "idle_time", "read_timeout", "key", "tls", "max_in_flight",
    "stan", "codec", "max_write_buffer", "max_inbound", "on_connect", "on_close", "on_established", "on_closed",
    "on_failed", "on_inbound", "on_ping", "on_read_timeout", "on_error", "listeners",
]
POOL_OPTIONS = ["reconnect_wait", "max_reconnect_wait", "jitter", "min_connections", "filter", "strategy", "on_error"]
SERVER_OPTIONS = ["framing", "tls", "max_connections", "on_inbound", "on_error", "on_closed", "handshake_timeout",
                  "backlog", "send_timeout", "max_inbound", "key"]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def built_or_refused(build: Callable[[], Any]) -> None:
    """Building either works or raises ConfigurationError: nothing else."""
    try:
        build()
    except ConfigurationError as exc:
        assert "\n" not in str(exc)


@FAST
@given(name=st.sampled_from(CONNECTION_OPTIONS), value=ANYTHING)
def test_any_connection_option_of_any_type_is_taken_or_refused_by_name(name, value):
    built_or_refused(lambda: geviso.Connection(("127.0.0.1", 1), spec, **{name: value}))


@FAST
@given(name=st.sampled_from(POOL_OPTIONS), value=ANYTHING)
def test_any_pool_option_of_any_type_is_taken_or_refused_by_name(name, value):
    built_or_refused(lambda: geviso.Pool(lambda a: geviso.Connection(a, spec), ["127.0.0.1:1"], **{name: value}))


@FAST
@given(name=st.sampled_from(SERVER_OPTIONS), value=ANYTHING)
def test_any_server_option_of_any_type_is_taken_or_refused_by_name(name, value):
    built_or_refused(lambda: geviso.Server(("127.0.0.1", 0), spec, **{name: value}))


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: geviso.Connection(("127.0.0.1", 1), spec, tls="yes"), "tls must be an ssl.SSLContext"),
        (lambda: geviso.Connection(("127.0.0.1", 1), spec, max_in_flight=-1), "max_in_flight"),
        (lambda: geviso.Connection(("127.0.0.1", 1), spec, max_write_buffer="64k"), "max_write_buffer"),
        (lambda: geviso.Connection(("127.0.0.1", 1), spec, stan="000001"), "stan must be a geviso.StanGenerator"),
        (lambda: geviso.Connection(("127.0.0.1", 1), spec, key="11"), "key must be a callable"),
        (lambda: geviso.Connection(("127.0.0.1", 1), spec, on_inbound="reply"), "on_inbound must be a callable"),
        (lambda: geviso.Connection(("127.0.0.1", 1), "default"), "spec must be a pyiso8583 spec"),
        (lambda: geviso.Connection(("127.0.0.1", 99999), spec), "the port must be 0..65535"),
        (lambda: geviso.Connection("evil\nERROR forged:1", spec), r"address 'evil\\nERROR forged': the host has"),
        (lambda: geviso.Pool(lambda a: None, 8583), "addresses must be a list"),
        (lambda: geviso.Pool(lambda a: None, ["127.0.0.1:1"], min_connections="1"), "min_connections"),
        (lambda: geviso.Pool("factory", ["127.0.0.1:1"]), "factory must be a callable"),
        (lambda: geviso.Server(("127.0.0.1", 0), spec, max_connections="10"), "max_connections"),
        (lambda: geviso.Server(("127.0.0.1", 0), spec, sendtimeout=1), "sendtimeout"),
        (lambda: geviso.Server(("127.0.0.1", 0), spec, backlog="x"), "backlog"),
        (lambda: geviso.MockHost(("127.0.0.1", 0), "default"), "spec must be a pyiso8583 spec"),
        (lambda: geviso.MockHost(("127.0.0.1", 0), rules=3), "rules must be a RuleSet"),
        (lambda: geviso.MockHost(("127.0.0.1", 0), network_codes="001"), "network_codes must be a dict"),
        (lambda: geviso.MockHost(("127.0.0.1", 0), echo_fields=11), "echo_fields must be a list"),
        (lambda: geviso.MockHost(("127.0.0.1", 0), approval_codes=[0]), "approval_codes must be a list"),
        (lambda: geviso.MockHost(("127.0.0.1", 0), front="proxy"), "front must be"),
        (lambda: geviso.MockHost(("127.0.0.1", 0), playback=3), "playback must be a capture's path"),
    ],
)
def test_a_wrong_option_is_refused_when_the_object_is_built(build, words):
    with pytest.raises((ConfigurationError, TypeError), match=words):
        build()


@pytest.fixture
def host():
    with geviso.MockHost(("127.0.0.1", 0), spec) as server:
        yield server


def from_another_thread(call: Callable[[], Any]) -> BaseException:
    """What ``call()`` raised in a thread of its own (it must raise, and at once)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: B036 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the call hung in the other thread"
    assert raised, "the call from another thread did not raise"
    return raised[0]


def test_a_link_used_from_another_thread_says_so_and_still_works_in_its_own(host):
    conn = geviso.Connection(host.address, spec, send_timeout=5).connect()
    for call in (lambda: conn.send(ECHO), lambda: conn.reply({"t": "0810"}), lambda: conn.close()):
        exc = from_another_thread(call)
        assert isinstance(exc, WrongThread) and "belongs to another thread" in str(exc)
    assert conn.send(ECHO)["39"] == "00"
    conn.close(timeout=2)


def test_a_pool_closed_from_another_thread_says_so_and_then_closes_in_its_own(host):
    pool = geviso.Pool(lambda a: geviso.Connection(a, spec, send_timeout=5), [host.address]).connect()
    for call in (lambda: pool.send(ECHO), lambda: pool.close()):
        assert isinstance(from_another_thread(call), WrongThread)
    assert pool.send(ECHO)["39"] == "00"
    with gevent.Timeout(10, AssertionError("close() hung")):
        pool.close(timeout=2)


def test_a_server_or_store_used_from_another_thread_says_so(host, tmp_path):
    assert isinstance(from_another_thread(lambda: host.stop(timeout=1)), WrongThread)
    with geviso.Connection(host.address, spec, send_timeout=5) as conn:
        assert conn.send(ECHO)["39"] == "00"  # the host still serves
        saf = geviso.StoreAndForward(conn, str(tmp_path / "saf.db"), forward=False)
        try:
            assert isinstance(from_another_thread(lambda: saf.put({"t": "0420", "11": "000001"})), WrongThread)
        finally:
            saf.close()


def test_write_takes_bytes_not_text(host):
    with geviso.Connection(host.address, spec, send_timeout=5) as conn:
        with pytest.raises(LocalProtocolError, match="write\\(\\) takes bytes"):
            conn.write("0800")  # type: ignore[arg-type]
        assert conn.send(ECHO)["39"] == "00"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"window": "4"}, "window must be a whole number"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"accepted_codes": 0}, "accepted_codes"),
        ({"stan": "000001"}, "stan must be a geviso.StanGenerator"),
        ({"on_delivered": "log"}, "on_delivered must be a callable"),
    ],
)
def test_a_wrong_store_and_forward_option_is_refused_by_name(options, words, tmp_path):
    conn = geviso.Connection(("127.0.0.1", 1), spec)  # never connected: nothing is sent
    with pytest.raises(ConfigurationError, match=words):
        geviso.StoreAndForward(conn, str(tmp_path / "saf.db"), forward=False, **options)


@pytest.mark.parametrize(
    ("target", "store", "words"),
    [(None, "saf.db", "target must be a geviso.Connection"), ("127.0.0.1:1", "saf.db", "target must be"),
     ("conn", 3, "store must be a SQLite path")],
)
def test_a_store_and_forward_target_or_store_of_the_wrong_kind_is_refused(target, store, words, tmp_path):
    if target == "conn":
        target = geviso.Connection(("127.0.0.1", 1), spec)
    with pytest.raises(ConfigurationError, match=words):
        # None is a target only for a process that stores and never forwards (forward=False).
        geviso.StoreAndForward(target, str(tmp_path / store) if isinstance(store, str) else store, forward=True)


def test_a_reversal_of_something_that_is_not_a_message_is_refused(tmp_path, capfd):
    conn = geviso.Connection(("127.0.0.1", 1), spec)
    saf = geviso.StoreAndForward(conn, str(tmp_path / "saf.db"), forward=False)
    try:
        with pytest.raises(ConfigurationError, match="the original is a message"):
            saf.reverse("0200")  # type: ignore[arg-type]
    finally:
        saf.close()
    with pytest.raises(geviso.StoreRefused):
        geviso.StoreAndForward(conn, str(tmp_path), forward=False)  # a folder, not a store
    assert "Traceback" not in capfd.readouterr().err  # no threadpool traceback on stderr
