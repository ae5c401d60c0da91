"""Locust runs for real: as a library (Environment and a local runner, a few seconds) and
once as ``locust --headless --processes 2``. Requests are counted under the right names,
failures as failures, and the mock host received exactly what Locust counted.

Locust monkey-patches the standard library when imported, which would change every
other test of this session; geviso needs no patching (it uses gevent's sockets), so
this module turns it off for the in-process runs. The subprocess run is patched as usual.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

# Read once, when locust is first imported; not left set for other tests' subprocesses.
_SKIP_PATCH_SET = "LOCUST_SKIP_MONKEY_PATCH" not in os.environ
os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")

import gevent  # noqa: E402
import pytest  # noqa: E402
from conftest import wait_until  # noqa: E402
from locust import User, constant, task  # noqa: E402
from locust.argument_parser import parse_locustfile_paths  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.event import Events  # noqa: E402
from locust.util.load_locustfile import load_locustfile  # noqa: E402

import geviso  # noqa: E402
from geviso import locust as gl  # noqa: E402

if _SKIP_PATCH_SET:
    del os.environ["LOCUST_SKIP_MONKEY_PATCH"]

ROOT = Path(__file__).resolve().parent.parent
LOADTESTS = ROOT / "loadtests"
BIN = Path(sys.executable).parent
TEST_BIN_PREFIXES = ("411111", "401288", "555555", "510510", "222300", "378282", "601111", "353011", "4000")
#: A run of digits long enough to be a PAN, starting with a test BIN (not part of a longer
#: number, nor a timestamp's fraction): must never be logged.
FULL_PAN = re.compile(r"(?<![\d.])(?:%s)\d{7,13}(?!\d)" % "|".join(TEST_BIN_PREFIXES))


def scenario_classes() -> dict[str, type[User]]:
    """The User classes ``locust -f loadtests`` picks up, loaded the way Locust loads them."""
    user_classes: dict[str, type[User]] = {}
    for path in parse_locustfile_paths([str(LOADTESTS)]):
        loaded = load_locustfile(path)  # (doc, users, shapes) up to Locust 2.3x, (users, shapes) since
        user_classes.update(loaded[-2])
    return user_classes


def run(env: Environment, users: int, seconds: float) -> None:
    """Start ``users`` at once, let them run, stop (test_stop closes the links)."""
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=1000)
    gevent.sleep(seconds)
    runner.quit()


def entries(env: Environment) -> dict[str, Any]:
    return {name: entry for (name, method), entry in env.stats.entries.items() if method == gl.REQUEST_TYPE}


def unexpected_failures(env: Environment) -> list[str]:
    """Every failure: a request cut off by the end of the run is none (it is not reported)."""
    return [str(e.error) for e in env.stats.errors.values()]


def cut_off(env: Environment) -> int:
    """Requests of this run's links cut off by the end of the run (not reported)."""
    return sum(links.cut_off for links in gl._links.get(env, {}).values())


# -- test data ----------------------------------------------------------------------------
def test_luhn_accepts_published_test_cards_and_made_pans_are_valid() -> None:
    for pan in ("4111111111111111", "378282246310005", "5555555555554444", "6011111111111117"):
        assert gl.luhn_valid(pan)
    assert not gl.luhn_valid("4111111111111112")
    for length in (15, 16, 19):
        pan = gl.make_pan("411111", length)
        assert len(pan) == length and pan.startswith("411111") and gl.luhn_valid(pan)


def test_field_7_rrn_and_original_data_formats() -> None:
    moment = datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    assert gl.transmission_datetime(moment) == "0301045958"  # UTC, MMDDhhmmss
    rrn = gl.RrnGenerator(node=3)
    refs = [rrn.next(moment) for _ in range(1000)]
    assert all(len(r) == 12 and r.isdigit() for r in refs) and len(set(refs)) == 1000
    assert refs[0] == "4060" + "3" + "0000000"  # 2024 -> 4, day 60, node 3, counter
    assert len(gl.original_data("0100", "000042", "0301045958", "412345")) == 42


# -- loading --------------------------------------------------------------------------------
def test_locust_picks_up_each_scenario_once_and_no_abstract_user() -> None:
    classes = scenario_classes()
    assert set(classes) == {"PurchaseUser", "AuthCompletionUser", "ReversalUser", "EchoUser"}
    assert all(issubclass(c, gl.ISO8583User) and not c.abstract for c in classes.values())


# -- library runs ---------------------------------------------------------------------------
def test_mixed_scenario_counts_every_request_and_the_host_received_them_all(caplog: Any, monkeypatch: Any) -> None:
    caplog.set_level("DEBUG", logger="geviso")
    contexts: list[dict[str, Any]] = []
    sent: list[dict[str, str]] = []
    real_send = gl.ISO8583Client._send

    def recording_send(self: gl.ISO8583Client, links: gl.Links, doc: dict[str, str], timeout: float) -> Any:
        sent.append(dict(doc))
        return real_send(self, links, doc, timeout)

    monkeypatch.setattr(gl.ISO8583Client, "_send", recording_send)
    env = Environment(user_classes=list(scenario_classes().values()), events=Events(), stop_timeout=3.0)
    env.events.request.add_listener(lambda context, **kw: contexts.append(context))
    host = gl.start_mock_host(env)
    assert env.host == "tcp://%s:%d" % host.address
    run(env, users=20, seconds=3.0)
    gl.stop_mock_host(env)

    stats = entries(env)
    assert {
        "0200 purchase",
        "0100 authorization",
        "0220 completion",
        "0100 slow issuer (SendTimeout)",
        "0400 reversal",
        "0800 echo",
        "0800 sign-on",
    } <= set(stats)
    total = env.stats.total
    # Nothing lost: each request Locust counted reached the host, and nothing else did
    # but requests cut off by the end of the run (killed users' sends, not reported).
    assert total.num_requests <= host.stats.received <= total.num_requests + cut_off(env)
    # Two shared links for the whole process, each signed on once and off at test_stop.
    assert host.stats.accepted == 2
    assert stats["0800 sign-on"].num_requests == stats["0800 sign-off"].num_requests == 2
    # Each slow authorization timed out, its expected outcome (a success in a row of its
    # own, with the outcome in the context), and was reversed; nothing failed.
    slow = stats["0100 slow issuer (SendTimeout)"]
    assert slow.num_requests > 0 and slow.num_failures == 0
    assert "0100 slow issuer" not in stats
    assert {"SendTimeout"} == {c["outcome"] for c in contexts if "outcome" in c}
    assert stats["0400 reversal"].num_failures == 0
    assert stats["0400 reversal"].num_requests >= slow.num_requests - cut_off(env) - 1
    assert total.num_failures == 0, unexpected_failures(env)
    # Response codes travel in the context; declines are not failures for these users.
    codes = {c.get("response_code") for c in contexts}
    assert "00" in codes and all(c.get("response_code") != "00" or c.get("response_mti") for c in contexts)
    assert not [r.getMessage() for r in caplog.records if FULL_PAN.search(r.getMessage())]
    check_messages(sent)


def check_messages(sent: list[dict[str, str]]) -> None:
    """What the scenarios send is well formed: STAN, UTC field 7, RRN, terminal, merchant."""
    now = datetime.datetime.now(datetime.timezone.utc)
    originals = {doc["37"]: doc for doc in sent if doc["t"] in ("0100", "0200")}
    assert len(originals) == len([d for d in sent if d["t"] in ("0100", "0200")])  # each RRN once
    stans = [doc["11"] for doc in sent]
    assert len(set(stans)) == len(stans) and all(re.fullmatch(r"\d{6}", s) and s != "000000" for s in stans)
    for doc in sent:
        sent_at = datetime.datetime.strptime(f"{now.year}{doc['7']}", "%Y%m%d%H%M%S").replace(tzinfo=now.tzinfo)
        assert abs((now - sent_at).total_seconds()) < 120, doc["7"]
        if doc["t"] == "0800":
            continue
        assert gl.luhn_valid(doc["2"]) and len(doc["41"]) == 8 and len(doc["42"]) == 15 and len(doc["43"]) == 40
        assert re.fullmatch(r"\d{12}", doc["37"]) and re.fullmatch(r"\d{12}", doc["4"])
        if doc["t"] in ("0220", "0400"):  # a follow-up names its original and keeps its RRN
            original = originals[doc["37"]]
            assert doc["90"][:10] == original["t"] + original["11"] and doc["2"] == original["2"]
            assert doc["41"] == original["41"] and doc["11"] != original["11"]
    assert {"0100", "0200", "0220", "0400", "0800"} <= {doc["t"] for doc in sent}


class _Cards(gl.ISO8583User):
    abstract = True
    wait_time = constant(0.01)
    mock_rules = [{"match": {"pan_prefix": "400002"}, "code": "05"}]

    def on_start(self) -> None:
        self.n = 0

    @task
    def purchase(self) -> None:
        self.n += 1
        pan = "4000020000000000" if self.n % 2 else "4111111111111111"
        doc = {"t": "0200", "2": pan, "3": "000000", "4": "000000001000", "41": "TERM0001", "42": "M00000000000001"}
        self.client.send(doc)


class StrictUser(_Cards):
    declines_fail = True

    def context(self) -> dict[str, str]:
        return {"who": "strict"}


class LenientUser(_Cards):
    def context(self) -> dict[str, str]:
        return {"who": "lenient"}


def test_declines_are_failures_only_for_users_that_ask() -> None:
    codes: dict[str, list[str]] = {"strict": [], "lenient": []}
    failures: list[Any] = []

    def on_request(name: str, context: dict[str, Any], exception: Any, **kw: Any) -> None:
        if name == "0200" and "response_code" in context:  # answered (not stopped mid-request)
            codes[context["who"]].append(context["response_code"])
        if exception is not None:
            failures.append(exception)

    env = Environment(user_classes=[StrictUser, LenientUser], events=Events(), stop_timeout=2.0)
    env.events.request.add_listener(on_request)
    host = gl.start_mock_host(env)
    run(env, users=4, seconds=1.0)
    gl.stop_mock_host(env)

    strict, lenient = codes["strict"], codes["lenient"]
    assert "05" in strict and "00" in strict and "05" in lenient and "00" in lenient
    entry = entries(env)["0200"]  # default name: the MTI
    declined = [e for e in failures if isinstance(e, geviso.errors.Declined)]
    assert len(declined) == strict.count("05") and all(e.code == "05" for e in declined)
    assert len(declined) == len(failures)  # nothing else failed, not even at the end
    assert entry.num_failures == len(failures)
    assert host.stats.codes["05"] == strict.count("05") + lenient.count("05")
    assert host.stats.received == env.stats.total.num_requests


class PerUserLink(gl.ISO8583User):
    link_per_user = True
    wait_time = constant(0.05)

    @task
    def echo(self) -> None:
        self.client.send({"t": "0800", "7": gl.transmission_datetime(), "70": gl.ECHO}, name="echo")


def test_one_link_per_user_by_option_and_links_close_at_test_stop() -> None:
    env = Environment(user_classes=[PerUserLink], events=Events(), stop_timeout=2.0)
    host = gl.start_mock_host(env)
    run(env, users=3, seconds=1.0)
    assert wait_until(lambda: not host.connections)  # closed at test_stop
    gl.stop_mock_host(env)
    assert host.stats.accepted == 3
    stats = entries(env)
    assert stats["0800 sign-on"].num_requests == 3 and stats["echo"].num_requests > 3
    assert not unexpected_failures(env)
    assert host.stats.received == env.stats.total.num_requests


def test_shared_links_follow_iso_connections_and_tls_host(certs: Any) -> None:
    tls = geviso.tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key)
    host = geviso.MockHost(("127.0.0.1", 0), tls=tls)
    host.start()
    try:
        options = Namespace(iso_connections=3, iso_ca=certs.ca, iso_timeout=2.0)
        env = Environment(
            user_classes=[LenientUser],
            events=Events(),
            parsed_options=options,
            host="tls://127.0.0.1:%d" % host.address[1],
            stop_timeout=2.0,
        )
        run(env, users=6, seconds=1.0)
        assert host.stats.accepted == 3
        assert entries(env)["0800 sign-on"].num_requests == 3
        assert env.stats.total.num_requests > 20 and not unexpected_failures(env)
    finally:
        host.stop(timeout=2)


def test_a_host_that_is_down_fails_every_request_fast() -> None:
    env = Environment(user_classes=[LenientUser], events=Events(), host=f"tcp://127.0.0.1:{free_port()}")
    run(env, users=2, seconds=1.0)
    total = env.stats.total
    assert total.num_requests > 10 and total.num_failures == total.num_requests
    assert all("NoConnections" in repr(e.error) for e in env.stats.errors.values())


def test_bad_options_stop_locust_at_init() -> None:
    for options in (Namespace(iso_framing="binary3"), Namespace(iso_spec="nosuch"), Namespace(iso_connections=2)):
        env = Environment(user_classes=[LenientUser], events=Events(), parsed_options=options, host="http://x:1")
        with pytest.raises(geviso.ConfigurationError):
            gl._on_init(env, env.create_local_runner())


def test_iso_mock_admin_serves_the_embedded_hosts_admin_api_during_the_run() -> None:
    from geviso.mock.host import AdminClient

    options = Namespace(iso_mock_admin="127.0.0.1:0")
    env = Environment(user_classes=[LenientUser], events=Events(), parsed_options=options, stop_timeout=2.0)
    runner = env.create_local_runner()
    gl._on_init(env, runner)
    try:
        admin = AdminClient(gl.mock_admin(env).url)
        admin.add_rule({"name": "sales declined", "match": {"mti": "0200"}, "code": "05"}, at=0)
        runner.start(2, spawn_rate=1000)
        gevent.sleep(1.0)
        runner.quit()
        sales = admin.count({"mti": "0200"})
        assert sales > 0 and admin.rules()[0]["hits"] == sales
        assert admin.stats()["codes"]["05"] == sales
    finally:
        gl.stop_mock_host(env)
    assert gl.mock_admin(env) is None
    for bad, host in ((Namespace(iso_mock_admin="0.0.0.0:0"), None), (options, "tcp://127.0.0.1:1")):
        env = Environment(user_classes=[LenientUser], events=Events(), parsed_options=bad, host=host)
        with pytest.raises(geviso.ConfigurationError):
            gl._on_init(env, env.create_local_runner())
        assert gl.mock_host(env) is None


def test_thresholds_set_the_exit_code() -> None:
    env = Environment(events=Events(), parsed_options=Namespace(iso_max_failure_ratio=0.1, iso_max_p99_ms=500))
    env.create_local_runner()
    for ms in range(100):
        env.stats.log_request(gl.REQUEST_TYPE, "0200", ms, 40)
    gl._on_quitting(env)
    assert env.process_exit_code == 0
    for _ in range(20):
        env.stats.log_request(gl.REQUEST_TYPE, "0200", 900, 0)
        env.stats.log_error(gl.REQUEST_TYPE, "0200", "SendTimeout")
    assert len(gl.threshold_failures(env)) == 2
    gl._on_quitting(env)
    assert env.process_exit_code == 1


# -- the command line, distributed --------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _json_arrays(text: str) -> list[list[dict[str, Any]]]:
    decoder = json.JSONDecoder()
    found, pos = [], 0
    while (start := text.find("[", pos)) >= 0:
        try:
            obj, pos = decoder.raw_decode(text, start)
            found.append(obj)
        except ValueError:
            pos = start + 1
    return found


def locust_env() -> dict[str, str]:
    """The environment of a ``locust`` subprocess: monkey-patched as usual."""
    return {k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"}


def test_headless_processes_2_share_one_mock_host_and_lose_nothing() -> None:
    port = free_port()  # not Locust's default 5557: another run may hold it
    # No threshold options and no --stop-timeout: Locust's own rule (exit 1 on any
    # failure) applies, and users are killed mid-request at the end.
    args = "-f loadtests --headless --processes 2 -u 12 -r 12 -t 4s --json"
    cmd = [str(BIN / "locust"), *args.split(), "--master-port", str(port), "--master-bind-port", str(port)]
    proc = subprocess.run(cmd, cwd=ROOT, env=locust_env(), capture_output=True, text=True, timeout=45)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The master's stats are the non-empty JSON array (each worker prints an empty one).
    stats = {e["name"]: e for e in max(_json_arrays(proc.stdout), key=len)}
    assert {"0200 purchase", "0100 authorization", "0220 completion", "0800 sign-on"} <= set(stats)
    assert all(e["method"] == "ISO8583" for e in stats.values())
    # 2 workers x 2 shared links, each signed on. (Their sign-offs reach the master's
    # stats only when a worker stops within the half second Locust's master waits for
    # its last report; the single-process runs check the sign-offs.)
    assert stats["0800 sign-on"]["num_requests"] == 4, proc.stderr[-3000:]
    assert stats.get("0800 sign-off", {"num_requests": 0})["num_requests"] <= 4
    assert sum(e["num_failures"] for e in stats.values()) == 0, proc.stderr[-3000:]
    assert "0100 slow issuer" not in stats  # answered in time by the mock host: never
    assert proc.stderr.count("embedded mock host listening") == 2  # one host: a log line and a print
    line = re.search(r"embedded mock host stopped: (.*)", proc.stderr)
    assert line, proc.stderr[-3000:]
    host = dict(kv.split("=", 1) for kv in line.group(1).split())
    assert int(host["accepted"]) == 4
    assert int(host["received"]) >= sum(e["num_requests"] for e in stats.values())  # and the cut-off ones
    assert not FULL_PAN.search(proc.stderr) and not FULL_PAN.search(proc.stdout)


def test_sigterm_mid_run_closes_the_one_pool_once_and_quietly(tmp_path: Path) -> None:
    log_file = tmp_path / "locust.log"
    cmd = [str(BIN / "locust"), *"-f loadtests --headless -u 30 -r 30 -t 60s --json".split()]
    with open(log_file, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=locust_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert wait_until(lambda: "All users spawned" in log_file.read_text(), timeout=30), log_file.read_text()
        gevent.sleep(2.0)  # every scenario busy, slow authorizations waiting on the host
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err_text = log_file.read_text()
    assert proc.returncode == 0, err_text[-3000:]
    stats = {e["name"]: e for e in max(_json_arrays(out), key=len)}
    # One pool of two links: each signed on once and off once, and no second pool.
    assert stats["0800 sign-on"]["num_requests"] == stats["0800 sign-off"]["num_requests"] == 2, err_text[-3000:]
    line = re.search(r"embedded mock host stopped: (.*)", err_text)
    assert line and dict(kv.split("=", 1) for kv in line.group(1).split())["accepted"] == "2", err_text[-3000:]
    assert err_text.count("links to 127.0.0.1") == 1  # closed once
    # Quietly: no warning or error from geviso, no failure.
    noisy = [ln for ln in err_text.splitlines() if re.search(r"(WARNING|ERROR)/geviso", ln)]
    assert noisy == [] and "reconnecting" not in err_text
    assert sum(e["num_failures"] for e in stats.values()) == 0


@pytest.fixture(autouse=True)
def _no_leftover_hosts() -> Any:
    yield
    for env in list(gl._mock_hosts):
        gl.stop_mock_host(env, drain=0)


def test_iso_gc_freezes_the_heap_and_raises_the_gc_threshold_only_when_asked() -> None:
    import gc

    before = gc.get_threshold()
    gc.unfreeze()  # whatever ran before in this process (Locust, another test) may have frozen
    try:
        for asked in (False, True):
            env = Environment(user_classes=[LenientUser], events=Events(), parsed_options=Namespace(iso_gc=asked),
                              host="tcp://127.0.0.1:1")
            gl._on_init(env, env.create_local_runner())
            assert (gc.get_threshold()[0] == 50_000) is asked
            assert (gc.get_freeze_count() > 0) is asked
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
