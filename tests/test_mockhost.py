"""geviso.MockHost on real loopback sockets: card-host answers, every rule action, exact
stats, echoes to clients, rules-file errors before start, TLS and mutual TLS."""

from __future__ import annotations

import json
import time
from typing import Any

import gevent
import pytest
from conftest import respond, wait_until
from iso8583.specs import default as spec

import geviso
from geviso import tls

PAN = "4111111111111111"


def auth(mti: str = "0100", pan: str = PAN, amount: str = "000000001000", **fields: str) -> dict[str, str]:
    message = {
        "t": mti,
        "2": pan,
        "3": "000000",
        "4": amount,
        "7": "1125120000",
        "12": "120000",
        "13": "1125",
        "14": "2912",
        "22": "051",
        "37": "123456789012",
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "49": "840",
    }
    message.update(fields)
    return message


@pytest.fixture
def hosts():
    made: list[geviso.MockHost] = []

    def make(**options: Any) -> geviso.MockHost:
        host = geviso.MockHost(("127.0.0.1", 0), **options)
        host.start()
        made.append(host)
        return host

    yield make
    for host in made:
        host.stop(timeout=1)


@pytest.fixture
def clients(links):
    """``clients(host, **options)``: a connected client of ``host`` (see ``links``)."""
    return lambda host, **options: links(host.address, spec=spec, **options)


# -- answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["001", "002", "301"])
def test_network_management_is_answered_0810_approved(hosts, clients, code):
    conn = clients(hosts())
    response = conn.send({"t": "0800", "70": code, "7": "1125120000"})
    assert response["t"] == "0810"
    assert response["39"] == "00"
    assert response["70"] == code and response["7"] == "1125120000"
    assert "38" not in response


def test_network_codes_are_configurable(hosts, clients):
    conn = clients(hosts(network_codes={"001": "91", "301": "00"}, response_code="05"))
    assert conn.send({"t": "0800", "70": "001"})["39"] == "91"
    assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
    assert conn.send({"t": "0800", "70": "161"})["39"] == "05"  # unknown: the host's code


@pytest.mark.parametrize(
    ("mti", "answer_mti", "approval"),
    [("0100", "0110", True), ("0200", "0210", True), ("0120", "0130", True), ("0220", "0230", True),
     ("0400", "0410", False), ("0420", "0430", False), ("0421", "0430", False)],
)
def test_requests_get_their_response_mti_the_usual_fields_and_an_approval_code(hosts, clients, mti, answer_mti,
                                                                               approval):
    conn = clients(hosts())
    request = auth(mti)
    response = conn.send(request)
    assert response["t"] == answer_mti
    assert response["39"] == "00"
    for field in ("2", "3", "4", "7", "12", "13", "37", "41", "42", "49"):
        assert response[field] == request[field], field
    assert response["11"].isdigit() and len(response["11"]) == 6
    assert "14" not in response and "22" not in response  # not echoed
    if approval:
        assert len(response["38"]) == 6
    else:
        assert "38" not in response


def test_approval_codes_differ_and_an_advice_keeps_its_own(hosts, clients):
    conn = clients(hosts())
    codes = {conn.send(auth())["38"] for _ in range(3)}
    assert len(codes) == 3
    assert conn.send(auth("0120", **{"38": "ABC123"}))["38"] == "ABC123"


# -- rules: every action ----------------------------------------------------------------------
def test_rule_respond_with_a_code(hosts, clients):
    host = hosts(rules=[{"match": {"pan_prefix": "4000"}, "code": "51"}])
    conn = clients(host)
    declined = conn.send(auth(pan="4000000000000002"))
    assert declined["39"] == "51" and "38" not in declined
    assert conn.send(auth())["39"] == "00"
    assert host.stats.codes == {"51": 1, "00": 1}


def test_rule_matches_amount_and_any_field_and_sets_fields(hosts, clients):
    host = hosts(
        rules=[
            {"match": {"mti": "0200", "amount_above": 100000}, "code": "61"},
            {"match": {"fields": {"41": "TERM0002"}}, "code": "05", "fields": {"44": "NOPE"}},
        ]
    )
    conn = clients(host)
    assert conn.send(auth("0200", amount="000000100001"))["39"] == "61"
    assert conn.send(auth("0100", amount="000000100001"))["39"] == "00"
    special = conn.send(auth(**{"41": "TERM0002"}))
    assert special["39"] == "05" and special["44"] == "NOPE"


def test_rule_fixed_delay(hosts, clients):
    conn = clients(hosts(rules=[{"match": {"pan_prefix": "5555"}, "delay_ms": 300}]))
    started = time.monotonic()
    slow = gevent.spawn(conn.send, auth(pan="5555000000000000"))
    fast = conn.send(auth())  # not held up by the delayed one
    assert fast["39"] == "00" and not slow.ready()
    assert slow.get(timeout=5)["39"] == "00"
    assert time.monotonic() - started >= 0.29


def test_rule_random_delay_range(hosts, clients):
    conn = clients(hosts(rules=[{"delay_ms": [100, 200]}], seed=3))
    for _ in range(3):
        started = time.monotonic()
        conn.send(auth())
        assert time.monotonic() - started >= 0.099


def test_rule_drop_never_answers(hosts, clients):
    host = hosts(rules=[{"match": {"pan_prefix": "4000"}, "action": "drop"}])
    conn = clients(host)
    with pytest.raises(geviso.SendTimeout):
        conn.send(auth(pan="4000000000000000"), timeout=0.3)
    assert conn.send(auth())["39"] == "00"  # the link is fine
    assert host.stats.dropped == 1 and host.stats.received == 2 and host.stats.responded == 1


def test_rule_close_closes_the_link(hosts, clients):
    host = hosts(rules=[{"match": {"fields": {"41": "CLOSEME1"}}, "action": "close"}])
    conn = clients(host)
    assert conn.send(auth())["39"] == "00"
    started = time.monotonic()
    with pytest.raises(geviso.ConnectionClosed):
        conn.send(auth(**{"41": "CLOSEME1"}), timeout=10)
    assert time.monotonic() - started < 5  # at once, not at the timeout
    assert conn.wait_closed(timeout=5)
    assert host.stats.closed == 1
    assert wait_until(lambda: host.stats.connections == 0)


def test_rule_late_answers_after_the_client_gave_up(hosts, clients):
    host = hosts(rules=[{"match": {"pan_prefix": "4000"}, "action": "late", "delay_ms": 300}])
    unmatched: list[dict[str, str]] = []
    conn = clients(host, on_inbound=lambda c, d: unmatched.append(d))
    with pytest.raises(geviso.SendTimeout):
        conn.send(auth(pan="4000000000000002"), timeout=0.1)
    assert wait_until(lambda: host.stats.late == 1)
    assert wait_until(lambda: conn.stats.late == 1)
    assert unmatched[0]["t"] == "0110"  # the late answer reached the client's on_inbound
    assert host.stats.responded == 1


def test_stats_are_exact(hosts, clients):
    host = hosts(
        rules=[{"match": {"pan_prefix": "4000"}, "code": "05"}, {"match": {"pan_prefix": "4999"}, "action": "drop"}]
    )
    conn = clients(host)
    for _ in range(5):
        conn.send(auth())
    for _ in range(3):
        conn.send(auth(pan="4000000000000002"))
    jobs = [gevent.spawn(conn.send, auth(pan="4999000000000000"), timeout=0.2) for _ in range(2)]
    gevent.joinall(jobs)
    stats = host.stats
    assert (stats.received, stats.responded, stats.dropped, stats.errors) == (10, 8, 2, 0)
    assert stats.codes == {"00": 5, "05": 3}
    assert stats.connections == 1 and stats.accepted == 1
    data = stats.as_dict()
    assert data["received"] == 10 and data["codes"] == {"00": 5, "05": 3}
    assert "received=10" in stats.summary() and "codes=00:5,05:3" in stats.summary()


def test_many_concurrent_requests_each_get_their_own_answer(hosts, clients):
    host = hosts()
    conn = clients(host)
    jobs = [gevent.spawn(conn.send, auth(amount="%012d" % i)) for i in range(1, 501)]
    gevent.joinall(jobs, timeout=10)
    assert all(j.successful() and j.value["4"] == "%012d" % i for i, j in enumerate(jobs, 1))
    assert host.stats.responded == 500


def test_stop_lets_delayed_answers_out(hosts, clients):
    host = hosts(rules=[{"delay_ms": 200}])
    conn = clients(host)
    jobs = [gevent.spawn(conn.send, auth()) for _ in range(3)]
    gevent.sleep(0.05)
    host.stop(timeout=3)
    gevent.joinall(jobs, timeout=3)
    assert all(j.successful() and j.value["39"] == "00" for j in jobs)


# -- the host initiates -------------------------------------------------------------------------
def test_periodic_echo_is_answered_by_a_client_with_on_inbound(hosts, clients):
    host = hosts(echo_interval=0.1)
    seen: list[dict[str, str]] = []

    def client_answers(conn: geviso.Connection, doc: dict[str, str]) -> None:
        seen.append(doc)
        conn.reply(respond(doc))

    clients(host, on_inbound=client_answers)
    assert wait_until(lambda: host.stats.echoes_answered >= 2)
    assert seen[0]["t"] == "0800" and seen[0]["70"] == "301"
    assert host.stats.echoes_failed == 0


def test_a_client_without_on_inbound_reports_the_echo(hosts, clients):
    host = hosts(echo_interval=0.1, echo_timeout=0.2)
    errors: list[BaseException] = []
    clients(host, on_error=errors.append)
    assert wait_until(lambda: host.stats.echoes_failed >= 1)
    assert any("unhandled request" in str(e) for e in errors)


# -- configuration --------------------------------------------------------------------------------
def test_a_bad_rules_file_fails_before_the_host_starts(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"code": "05"}, {"name": "slow", "delay_ms": [5, 1]}]}))
    with pytest.raises(geviso.ConfigurationError) as info:
        geviso.MockHost(("127.0.0.1", 0), rules=str(path))
    text = str(info.value)
    assert str(path) in text and "rules[1]" in text and "'slow'" in text and "'delay_ms'" in text


def test_rules_from_a_yaml_file(tmp_path, hosts, clients):
    path = tmp_path / "rules.yaml"
    path.write_text("- match: {pan_prefix: '4000'}\n  code: '14'\n")
    conn = clients(hosts(rules=path))
    assert conn.send(auth(pan="4000000000000002"))["39"] == "14"


def test_a_mock_host_answers_by_itself():
    with pytest.raises(geviso.ConfigurationError, match="rules, not on_inbound"):
        geviso.MockHost(("127.0.0.1", 0), on_inbound=lambda c, d: None)


# -- TLS ----------------------------------------------------------------------------------------------
def test_tls_to_the_mock_host(hosts, clients, certs):
    host = hosts(tls=tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key))
    conn = clients(host, tls=tls.client_context(cafile=certs.ca))
    assert conn.send(auth())["39"] == "00"


def test_mutual_tls_to_the_mock_host(hosts, clients, certs):
    context = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key, client_cafile=certs.ca)
    host = hosts(tls=context)
    good = tls.client_context(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    assert clients(host, tls=good).send(auth())["39"] == "00"
    wrong_ca = tls.client_context(cafile=certs.other_ca)  # does not trust the host
    with pytest.raises(geviso.ConnectFailed):
        geviso.Connection(host.address, spec, tls=wrong_ca, connect_timeout=3).connect()
    assert host.stats.responded == 1


def test_rules_assigned_while_running_take_effect(hosts, clients):
    host = hosts()
    conn = clients(host)
    request = {"t": "0200", "3": "000000", "4": "000000000100"}
    assert conn.send(request)["39"] == "00"
    host.rules = [{"name": "decline all", "match": {"mti": "0200"}, "code": "05"}]
    assert conn.send(request)["39"] == "05"
