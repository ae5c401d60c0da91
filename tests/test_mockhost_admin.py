"""The mock host's admin API end to end: a real MockHost and admin server on loopback
port 0, real links, driven over HTTP by AdminClient (and raw HTTP for bad input)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from conftest import wait_until
from test_cli import MockHostProcess

from geviso import cli
from geviso.errors import AdminError, ConfigurationError
from geviso.mock.admin import AdminServer, check_exposure
from geviso.mock.host import AdminClient, MockHost

PAN = "4111111111111111"
START_RULES = [{"name": "big declined", "match": {"mti": "0100", "amount_above": 100000}, "code": "51"}]


def auth(stan: str, amount: str = "000000001000", **fields: str) -> dict[str, str]:
    doc = {"t": "0100", "2": PAN, "3": "000000", "4": amount, "11": stan, "41": "TERM0001"}
    doc.update(fields)
    return doc


class Stack:
    """A MockHost with its admin server and a client for both."""

    def __init__(self, token: Any = None, **options: Any) -> None:
        options.setdefault("rules", START_RULES)
        self.host = MockHost(("127.0.0.1", 0), **options)
        self.host.start()
        self.admin = AdminServer(self.host, ("127.0.0.1", 0), token=token).start()
        self.client = AdminClient(self.admin.url, token=token)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.host.server_port)

    def stop(self) -> None:
        self.admin.stop()
        self.host.stop(timeout=2)


@pytest.fixture
def stack() -> Iterator[Stack]:
    made = Stack()
    yield made
    made.stop()


def raw(stack: Stack, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any]:
    """One HTTP call by hand (bad bodies AdminClient would never send): status and JSON."""
    req = urllib.request.Request(stack.admin.url + path, data=body or None, method=method, headers=headers)

    def call() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, data = gevent.get_hub().threadpool.apply(call)
    return status, json.loads(data)


def test_a_scenario_approves_declines_then_approves_and_the_journal_verifies_it(stack, links):
    admin = stack.client
    for rule in (
        {"name": "1st ok", "scenario": "auth", "state": "Started", "new_state": "one", "code": "00"},
        {"name": "2nd 51", "scenario": "auth", "state": "one", "new_state": "two", "code": "51"},
    ):
        admin.add_rule(rule)
    conn = links(stack.address)
    codes = [conn.send(auth(f"00000{n}"))["39"] for n in range(1, 4)]
    assert codes == ["00", "51", "00"]
    assert admin.scenarios()["auth"]["state"] == "two"
    assert admin.count({"mti": "0100"}) == 3
    assert admin.count({"mti": "0100", "fields": {"11": "000002"}}) == 1
    assert [e["rule"] for e in admin.journal(mti="0100")] == ["1st ok", "2nd 51", None]
    assert admin.journal(rule="2nd 51")[0]["answer"]["39"] == "51"
    admin.set_scenario("auth", "one")
    assert conn.send(auth("000004"))["39"] == "51"
    admin.reset_scenarios()
    assert admin.scenarios()["auth"]["state"] == "Started"


def test_rule_changes_take_effect_for_the_next_message_on_every_link(stack, links):
    admin = stack.client
    one, two = links(stack.address), links(stack.address)
    assert one.send(auth("000001"))["39"] == "00"
    added = admin.add_rule({"name": "terminal 2", "match": {"fields": {"41": "TERM0002"}}, "code": "05"}, at=0)
    assert added["index"] == 0 and added["name"] == "terminal 2"
    assert [r["name"] for r in admin.rules()] == ["terminal 2", "big declined"]
    assert two.send(auth("000002", **{"41": "TERM0002"}))["39"] == "05"
    assert one.send(auth("000003", **{"41": "TERM0002"}))["39"] == "05"
    assert admin.rules()[0]["hits"] == 2
    admin.enable_rule("terminal 2", False)
    assert one.send(auth("000004", **{"41": "TERM0002"}))["39"] == "00"
    admin.enable_rule(0, True)
    admin.move_rule("terminal 2", 1)
    assert [r["name"] for r in admin.rules()] == ["big declined", "terminal 2"]
    assert admin.rules()[1]["hits"] == 2  # hits follow the rule
    assert admin.delete_rule("terminal 2")["code"] == "05"
    assert two.send(auth("000005", **{"41": "TERM0002"}))["39"] == "00"
    assert admin.replace_rules({"rules": [{"code": "91"}]}) == 1
    assert one.send(auth("000006"))["39"] == "91"
    assert admin.reset_rules() == 1
    assert admin.rules()[0]["rule"] == START_RULES[0]
    assert one.send(auth("000007", amount="000000200000"))["39"] == "51"


def test_bad_input_gets_400_with_the_rules_file_error_and_changes_nothing(stack):
    before = stack.client.rules()
    cases = [
        ("POST", "/rules", b"{not json", "not valid JSON"),
        ("POST", "/rules", b'{"code": "05", "colour": "red"}', "rules[1], key 'colour': unknown key"),
        ("POST", "/rules", b'{"match": {"mti": "01"}}', "key 'match.mti': '01' is not 4 digits"),
        ("POST", "/rules", b'{"delay_ms": -5}', "key 'delay_ms': expected milliseconds"),
        ("POST", "/rules", b'{"delay_ms": NaN}', "not valid JSON"),
        ("POST", "/rules?at=9", b'{"code": "05"}', "position is 0 to 1"),
        ("PUT", "/rules", b'[{"code": "05"}, {"action": "explode"}]', "rules[1], key 'action'"),
        ("POST", "/rules", '{"name": "accented", "code": "\u00e91"}'.encode(), "does not fit the spec"),
        ("PATCH", "/rules/0", b'{"enabled": "no"}', "enabled is true or false"),
        ("PATCH", "/rules/0", b'{"colour": 1}', "unknown key 'colour'"),
        ("POST", "/journal/count", b'{"mti": "x"}', "key 'match.mti'"),
        ("GET", "/journal?colour=red", b"", "unknown journal filter"),
        ("POST", "/links/send", b'{"message": {"2": "x"}}', '"t"'),
    ]
    for method, path, body, expected in cases:
        status, data = raw(stack, method, path, body, **{"Content-Type": "application/json"})
        assert status == 400, (method, path, data)
        assert expected in data["error"] and "\n" not in data["error"], (path, data)
    assert stack.client.rules() == before
    assert raw(stack, "DELETE", "/rules/7")[0] == 404
    assert raw(stack, "DELETE", "/rules/no%20such")[0] == 404
    assert raw(stack, "GET", "/nowhere")[0] == 404
    assert raw(stack, "PUT", "/stats")[0] == 405
    with pytest.raises(AdminError) as caught:
        stack.client.close_link(99)
    assert caught.value.status == 404 and "no open link 99" in str(caught.value)


def test_the_journal_is_masked_bounded_and_explains_near_misses(links):
    stack = Stack(journal_size=3)
    try:
        conn = links(stack.address)
        for n in range(1, 6):
            conn.send(auth(f"00000{n}", **{"35": PAN + "=25121010000000000", "52": "0123456789ABCDEF"}))
        entries = stack.client.journal()
        assert [e["request"]["11"] for e in entries] == ["000003", "000004", "000005"]
        text = json.dumps(entries)
        assert PAN not in text and "0123456789ABCDEF" not in text and "411111******1111" in text
        assert entries[-1]["request"]["35"] == "[redacted]" and entries[-1]["link"] == 1
        miss = entries[-1]["near_misses"][0]
        assert miss["name"] == "big declined" and miss["reasons"] == ["field 4 is 000000001000, not above 100000"]
        assert [e["seq"] for e in stack.client.journal(limit=1, link=1)] == [5]
        assert stack.client.journal(since=entries[-1]["time"])[0]["seq"] == 5
        assert stack.client.clear_journal() == 3
        assert stack.client.count() == 0
    finally:
        stack.stop()


def test_links_are_listed_closed_and_sent_host_initiated_messages(stack, links):
    def answer(conn, doc):
        conn.reply({"t": "0810", "11": doc["11"], "39": "00", "70": doc["70"]})

    one = links(stack.address, on_inbound=answer)
    links(stack.address, on_inbound=answer)
    assert wait_until(lambda: len(stack.client.links()) == 2)
    listed = stack.client.links()
    assert [link["id"] for link in listed] == [1, 2] and all(link["age"] >= 0 for link in listed)
    results = stack.client.send({"t": "0800", "70": "161"})  # a key change to every link
    assert sorted(r["link"] for r in results) == [1, 2]
    assert all(r["answer"]["39"] == "00" and r["answer"]["70"] == "161" for r in results)
    [only] = stack.client.send({"t": "0800", "70": "301"}, link=1)
    assert only["answer"]["t"] == "0810"
    stack.client.close_link(1)
    assert wait_until(lambda: one.state == "closed")
    assert [link["id"] for link in stack.client.links()] == [2]


def test_stats_and_prometheus_text(stack, links):
    conn = links(stack.address)
    conn.send(auth("000001"))
    conn.send(auth("000002", amount="000000200000"))
    stats = stack.client.stats()
    assert stats["received"] == 2 and stats["codes"] == {"00": 1, "51": 1}
    text = stack.client.metrics()
    assert "geviso_mock_received_total 2" in text
    assert 'geviso_mock_responses_total{code="51"} 1' in text
    assert 'geviso_mock_rule_hits_total{rule="big declined",index="0"} 1' in text
    overview = stack.client.overview()
    assert overview["stats"]["received"] == 2 and len(overview["journal"]) == 2 and overview["rules"][0]["hits"] == 1


def test_a_token_is_required_once_given_and_off_loopback():
    with pytest.raises(ConfigurationError, match="only with a token"):
        check_exposure("0.0.0.0:8584", None)
    with pytest.raises(ConfigurationError, match="only with a token"):
        check_exposure(("192.0.2.1", 8584), None)
    assert check_exposure("[::1]:8584", None) == ("::1", 8584)
    assert check_exposure("0.0.0.0:8584", "s3cret") == ("0.0.0.0", 8584)
    stack = Stack(token="s3cret")
    try:
        assert stack.client.stats()["received"] == 0
        with pytest.raises(AdminError) as caught:
            AdminClient(stack.admin.url).stats()
        assert caught.value.status == 401
        with pytest.raises(AdminError):
            AdminClient(stack.admin.url, token="wrong").rules()
    finally:
        stack.stop()


def test_cli_serves_the_admin_api_and_refuses_an_exposed_one_without_token(capsys):
    assert cli.main(["mock-host", "--port", "0", "--admin", "0.0.0.0:0"]) == 2
    assert "only with a token (--admin-token)" in capsys.readouterr().err
    assert cli.main(["mock-host", "--port", "0", "--admin", "127.0.0.1:0", "--workers", "2"]) == 2
    proc = MockHostProcess("--admin", "127.0.0.1:0", "--journal-size", "5")
    try:
        with gevent.Timeout(30, AssertionError("no admin line")):
            line = proc.proc.stdout.readline()
        found = re.match(r"geviso mock-host admin on (http://\S+)", line)
        assert found, line
        admin = AdminClient(found.group(1))
        assert admin.stats()["received"] == 0 and admin.rules() == []
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_the_page_and_its_files_are_served_from_the_package_without_the_token():
    from importlib import resources

    names = {p.name for p in resources.files("geviso.mock.admin_static").iterdir()}
    assert {"index.html", "admin.css", "admin.js"} <= names
    stack = Stack(token="s3cret")
    try:

        def get(path: str) -> tuple[int, str, bytes]:
            def call() -> tuple[int, str, bytes]:
                try:
                    with urllib.request.urlopen(stack.admin.url + path, timeout=10) as resp:
                        return resp.status, resp.headers["Content-Type"], resp.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.headers["Content-Type"], exc.read()

            return gevent.get_hub().threadpool.apply(call)

        status, kind, body = get("/")
        assert status == 200 and kind.startswith("text/html") and b"<title>geviso mock host</title>" in body
        assert b"http" not in body  # nothing from the network: no CDN
        status, kind, body = get("/static/admin.js")
        assert status == 200 and "javascript" in kind and b"/overview" in body
        assert get("/static/admin.css")[0] == 200
        assert get("/static/../admin.py")[0] == 404
        assert get("/static/nosuch.js")[0] == 404
        assert get("/overview")[0] == 401  # the data needs the token; the page does not
    finally:
        stack.stop()
