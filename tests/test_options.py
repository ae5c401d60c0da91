"""Every timeout, interval and delay option refuses values that would jam or never end
timers (NaN, infinities, negatives, booleans, non-numbers, over a day), naming the option;
and a framing may be given by name wherever a framing is taken."""

from __future__ import annotations

import math
from typing import Any, Callable

import gevent
import pytest
from iso8583.specs import default as spec

import geviso
from geviso import framing, keepalive, options

BAD = [math.nan, math.inf, -math.inf, -1, True, "5", 86_401, 10**400, [1], None]
BAD_IDS = ["nan", "inf", "-inf", "negative", "bool", "str", "over-a-day", "400-digits", "list", "None"]

# Each builds something with one option set to a value; the option's name must be in the error.
BUILDERS: dict[str, Callable[[Any], Any]] = {
    "send_timeout": lambda v: geviso.Connection("127.0.0.1:1", spec, send_timeout=v),
    "connect_timeout": lambda v: geviso.Connection("127.0.0.1:1", spec, connect_timeout=v),
    "idle_time": lambda v: geviso.Connection("127.0.0.1:1", spec, idle_time=v),
    "read_timeout": lambda v: geviso.Connection("127.0.0.1:1", spec, read_timeout=v),
    "reconnect_wait": lambda v: geviso.Pool(lambda a: None, ["127.0.0.1:1"], reconnect_wait=v),
    "max_reconnect_wait": lambda v: geviso.Pool(lambda a: None, ["127.0.0.1:1"], max_reconnect_wait=v),
    "jitter": lambda v: geviso.Pool(lambda a: None, ["127.0.0.1:1"], jitter=v if v != 86_401 else 1.5),
    "handshake_timeout": lambda v: geviso.Server(("127.0.0.1", 0), spec, handshake_timeout=v),
    "echo_interval": lambda v: geviso.MockHost(("127.0.0.1", 0), echo_interval=v),
    "echo_timeout": lambda v: geviso.MockHost(("127.0.0.1", 0), echo_timeout=v),
    "timeout": lambda v: keepalive.echo_handler(v),
    "poll_interval": lambda v: _saf()(None, "/nonexistent/saf.db", poll_interval=v),
    "retry_wait": lambda v: _policy()(retry_wait=v, max_wait=max(v, 60) if isinstance(v, int) else 60),
    "proxy timeout": lambda v: _module("mock.proxy").RecordingProxy(("127.0.0.1", 1), timeout=v),
    "replay timeout": lambda v: _module("capture.replay").Replayer(("127.0.0.1", 1), spec, timeout=v),
    "admin client timeout": lambda v: _module("mock.adminclient").AdminClient("http://127.0.0.1:1", timeout=v),
}


def _module(name: str) -> Any:
    import importlib

    return importlib.import_module(f"geviso.{name}")


def _saf() -> Any:
    return _module("saf.forwarder").StoreAndForward


def _policy() -> Any:
    return _module("saf.core").Policy
# None means "off" or "the default" for these.
NONE_ALLOWED = {"echo_interval"}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
def test_every_time_option_refuses_what_no_timer_can_use(name, value):
    if value is None and name in NONE_ALLOWED:
        BUILDERS[name](value)
        return
    with pytest.raises(geviso.ConfigurationError) as info:
        BUILDERS[name](value)
    text = str(info.value)
    assert name.split()[-1] in text and "\n" not in text and len(text) < 200


def test_a_store_and_forward_expiry_may_be_weeks_but_not_nan_or_forever():
    policy = _policy()
    assert policy(expire_after=30 * 86_400).expire_after == 30 * 86_400
    assert policy(expire_after=None).expire_after is None
    for bad in (math.nan, math.inf, 0, True, 10**400):
        with pytest.raises(geviso.ConfigurationError, match="expire_after"):
            policy(expire_after=bad)


def test_mock_host_read_timeout_none_means_never_and_bad_values_are_refused():
    assert geviso.MockHost(("127.0.0.1", 0), read_timeout=None).read_timeout is None
    for value in (math.nan, -1, 0, True, 10**400):
        with pytest.raises(geviso.ConfigurationError, match="read_timeout"):
            geviso.MockHost(("127.0.0.1", 0), read_timeout=value)
    with pytest.raises(geviso.ConfigurationError, match="max_echo_failures"):
        geviso.MockHost(("127.0.0.1", 0), max_echo_failures=0)


def test_good_values_come_back_as_floats():
    assert options.seconds(3, "x") == 3.0 and isinstance(options.seconds(3, "x"), float)
    assert options.seconds(0, "x") == 0.0
    assert options.seconds(86_400, "x") == 86_400.0
    assert options.optional_seconds(None, "x") is None
    with pytest.raises(geviso.ConfigurationError, match="x must be seconds > 0"):
        options.seconds(0, "x", positive=True)


def test_per_call_timeouts_are_checked_before_anything_is_written():
    with geviso.MockHost(("127.0.0.1", 0)) as host:
        conn = geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=5).connect()
        try:
            for bad in (math.nan, math.inf, -1, True, "1"):
                with pytest.raises(geviso.ConfigurationError, match="timeout"):
                    conn.send({"t": "0800", "70": "301"}, timeout=bad)
            assert host.stats.received == 0 and conn.in_flight == 0
            assert conn.send({"t": "0800", "70": "301"}, timeout=5)["39"] == "00"
            with pytest.raises(geviso.ConfigurationError, match="timeout"):
                keepalive.echo(conn, math.nan)
        finally:
            conn.close(timeout=1)
        pool = geviso.Pool(lambda a: geviso.Connection(a, spec), [("127.0.0.1", host.server_port)])
        with pytest.raises(geviso.ConfigurationError, match="timeout"):
            pool.connect(timeout=math.inf)
        pool.connect(timeout=5)
        try:
            with pytest.raises(geviso.ConfigurationError, match="timeout"):
                pool.send({"t": "0800", "70": "301"}, timeout=math.nan)
            with pytest.raises(geviso.ConfigurationError, match="timeout"):
                pool.close(timeout=-1)
        finally:
            pool.close(timeout=2)
        with pytest.raises(geviso.ConfigurationError, match="timeout"):
            host.stop(timeout=math.nan)


def test_timers_still_fire_after_a_nan_was_refused():
    with pytest.raises(geviso.ConfigurationError):
        geviso.MockHost(("127.0.0.1", 0), rules=[{"action": "late", "delay_ms": math.nan}])
    with gevent.Timeout(2, AssertionError("a timer no longer fires")):
        gevent.sleep(0.01)


@pytest.mark.parametrize("name", sorted(framing.BY_NAME))
def test_a_framing_name_is_accepted_wherever_a_framing_is_taken(name):
    with geviso.MockHost(("127.0.0.1", 0), framing=name) as host:
        assert host.framing.name == name
        conn = geviso.Connection(("127.0.0.1", host.server_port), spec, framing=name, send_timeout=5).connect()
        try:
            assert conn.framing.name == name
            assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
        finally:
            conn.close(timeout=1)


def test_a_bad_framing_is_a_configuration_error_listing_the_names():
    for bad in ("ascii5", 4, object()):
        with pytest.raises(geviso.ConfigurationError, match="binary2"):
            geviso.Connection("127.0.0.1:1", spec, framing=bad)
        with pytest.raises(geviso.ConfigurationError, match="binary2"):
            geviso.Server(("127.0.0.1", 0), spec, framing=bad)
    same = framing.ascii(4)
    assert framing.resolve(same) is same
    assert framing.resolve(None).name == "binary2"


@pytest.mark.parametrize(
    ("host_options", "client_framing"),
    [({"framing": "binary2"}, "ascii4"), ({"spec": "default_ascii"}, "binary2")],
    ids=["framing", "spec"],
)
def test_a_sign_on_timeout_with_nothing_received_says_framing_or_spec_may_not_match(host_options, client_framing):
    from iso8583.specs import default_ascii

    options = dict(host_options)
    if options.get("spec") == "default_ascii":
        options["spec"] = default_ascii
    with geviso.MockHost(("127.0.0.1", 0), **options) as host:
        conn = geviso.Connection(
            ("127.0.0.1", host.server_port),
            spec,
            framing=client_framing,
            send_timeout=0.3,
            on_connect=lambda c: c.send({"t": "0800", "70": "001"}),
        )
        with pytest.raises(geviso.ConnectFailed) as info:
            conn.connect()
    assert "framing or spec may not match" in str(info.value)
    assert client_framing in str(info.value)


def test_a_sign_on_timeout_after_frames_came_back_does_not_blame_the_framing():
    with geviso.MockHost(("127.0.0.1", 0), rules=[{"match": {"fields": {"70": "001"}}, "action": "drop"}]) as host:
        def sign_on(conn):
            conn.send({"t": "0800", "70": "301"})  # answered
            conn.send({"t": "0800", "70": "001"})  # dropped: a slow host, not a mismatch

        conn = geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=0.3, on_connect=sign_on)
        with pytest.raises(geviso.ConnectFailed) as info:
            conn.connect()
    assert "may not match" not in str(info.value)
